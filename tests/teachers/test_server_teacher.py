"""ServerTeacher: the settings of a teacher behind a server, its top-k laid out as a teacher cache's, training and its
faults against `ModelServer` (a stdlib HTTP server answering from a model in this process: no vLLM needed), and the
loss from the stock vLLM server of the demo teacher against the cached teacher of the same model (`pytest -m vllm`,
skipped without vLLM)."""

import os
import signal
import threading

import pytest
import torch
from safetensors.torch import load_file
from teacher_servers import DEMO, ModelServer
from testing_utils import tiny_llama, word_tokenizer
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from hf_distill import DistillConfig
from hf_distill.arguments.script_arguments import DataArguments
from hf_distill.cli import main
from hf_distill.commands.recipe import parse_recipe
from hf_distill.commands.train import build_trainer
from hf_distill.data.datasets import DistillDataCollator, layout_cached_teacher, prepare_datasets
from hf_distill.losses import DivergenceSpec
from hf_distill.losses.fused import fused_distillation_loss
from hf_distill.losses.terms import dense_distillation_terms
from hf_distill.models.hidden_states import lm_head
from hf_distill.run.checkpoints import is_complete
from hf_distill.teachers.cache_builder import teacher_topk
from hf_distill.teachers.live import LiveTeacher
from hf_distill.teachers.server import ServerTeacher, sequence_segments
from hf_distill.user_errors import UserInputError

URL = "http://127.0.0.1:8000"


def server_config(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path), use_teacher_server=True, teacher_model_server_url=URL)
    return DistillConfig(**{**values, **overrides})


# --- Settings --------------------------------------------------------------------------------------------------------


def test_a_server_is_the_runs_teacher_source_and_reads_teacher_cache_mode(tmp_path):
    config = server_config(tmp_path, teacher_cache_mode="tail_bucket", teacher_server_top_k=5)
    assert config.teacher_source == "server" and not config.uses_teacher_cache
    with pytest.raises(UserInputError, match=r"^teacher_cache_mode that would be ignored \(teacher_cache_mode="):
        DistillConfig(output_dir=str(tmp_path), teacher_cache_mode="tail_bucket")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"teacher_model_name_or_path": "recipes/demo/teacher"},
            "teacher_model_name_or_path with a teacher server (use_teacher_server=True, teacher_model_name_or_path="
            "'recipes/demo/teacher'): the server's teacher is the run's teacher: no teacher is loaded or read here, "
            "so it would be ignored; remove teacher_model_name_or_path, or set use_teacher_server: false",
        ),
        ({"teacher_cache_dir": "cache"}, "teacher_cache_dir with a teacher server (use_teacher_server=True, "),
        ({"teacher_weights": [1.0]}, "teacher_weights with a teacher server (use_teacher_server=True, "),
        (
            {"alpha": 1.0},
            "a teacher server with an unsupported setting (use_teacher_server=True, alpha=1.0): alpha=1.0 distils "
            "from no teacher; set alpha < 1",
        ),
        (
            {"cross_tokenizer": "uld"},
            "a teacher server with an unsupported setting (use_teacher_server=True, cross_tokenizer='uld'): ",
        ),
        (
            {"seq_kd": True},
            "a teacher server with an unsupported setting (use_teacher_server=True, seq_kd=True): seq_kd needs the "
            "teacher to write completions",
        ),
        (
            {"teacher_model_server_url": None},
            "invalid teacher_model_server_url (teacher_model_server_url=None): use_teacher_server needs the server "
            "as http(s)://HOST:PORT; set it to the vLLM server's address, e.g. http://127.0.0.1:8000",
        ),
        *[
            ({"teacher_model_server_url": url}, f"invalid teacher_model_server_url (teacher_model_server_url={url!r})")
            for url in ("127.0.0.1:8000", "http://127.0.0.1", "ftp://host:21", "http://host:8000/v2", "http://h:x")
        ],
        (
            {"teacher_cache_mode": "teacher_renormalized", "loss_type": "jsd"},
            "teacher_cache_mode='teacher_renormalized' is defined for loss_type='forward_kl' only",
        ),
        ({"teacher_server_top_k": 0}, "invalid teacher_server_top_k (teacher_server_top_k=0): must be >= 1"),
        ({"teacher_server_timeout": 0.0}, "invalid teacher_server_timeout (teacher_server_timeout=0.0): must be > 0"),
    ],
)
def test_settings_a_server_cannot_take_are_refused_in_one_line(tmp_path, overrides, expected):
    with pytest.raises(ValueError) as info:
        server_config(tmp_path, **overrides)
    line = str(info.value)
    assert line.startswith(expected) and "\n" not in line, line


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000", "https://teacher.example:443/", "http://[::1]:8000/v1"])
def test_server_urls_that_are_accepted(tmp_path, url):
    assert server_config(tmp_path, teacher_model_server_url=url).teacher_model_server_url == url


def test_hf_distill_check_validates_the_server_recipe_without_a_server(capsys):
    # Nothing listens at the recipe's URL here: check reads the fields, the data and the tokenizer only.
    main(["check", os.path.join("recipes", "demo", "teacher_server.yaml")])
    assert "Traceback" not in capsys.readouterr().err


# --- The top-k of a batch, against a model server --------------------------------------------------------------------


@pytest.fixture
def tiny_teacher():
    return tiny_llama(seed=2, hidden=48, layers=2).eval()


@pytest.fixture
def model_server(tiny_teacher):
    server = ModelServer(tiny_teacher)
    yield server
    server.stop()


def _batch(tokenizer, n=6):
    """The first `n` demo train examples, tokenized, and their padded batch."""
    data = DataArguments(dataset_name=os.path.join(DEMO, "data"), dataset_format="messages", max_length=96)
    train, _ = prepare_datasets(data, tokenizer)
    rows = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in train.select(range(n)).to_list()]
    return rows, DistillDataCollator(tokenizer)([dict(r) for r in rows])


def _cached_side(teacher_model, rows, batch, k, mode, pad_id):
    live = LiveTeacher([teacher_model], [1.0], "mean_probs", teacher_model.config.vocab_size)
    columns = teacher_topk(live, rows, k, pad_id)
    features = [{name: columns[name][i] for name in columns} for i in range(len(rows))]
    cached = layout_cached_teacher(batch["labels"], features, None)
    return cached["teacher_topk_ids"], cached["teacher_topk_logprobs"], cached["teacher_tail_logprob"]


def test_the_servers_top_k_is_laid_out_as_the_caches(model_server, tiny_teacher):
    tokenizer = word_tokenizer()
    # Demo data in the word tokenizer's words: tokens of the demo tokenizer's ids, within the tiny vocabulary.
    rows = [
        {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [-100] * 3 + ids[3:]}
        for ids in ([5, 9, 13, 2, 7, 11, 4], [8, 3, 6, 10, 12], [14, 15, 16, 17, 18, 19, 20, 21, 22])
    ]
    batch = DistillDataCollator(tokenizer)([dict(r) for r in rows])
    teacher = ServerTeacher(model_server.url, 5, "tail_bucket", timeout=10)
    teacher.check(tiny_teacher.config.vocab_size, tokenizer)
    side = teacher.side(batch, {}, fused=True, training=True)
    ids, logprobs, tail = _cached_side(tiny_teacher, rows, batch, 5, "tail_bucket", tokenizer.pad_token_id)
    targets = batch["labels"][:, 1:] != -100
    assert side.mode == "tail_bucket" and side.ids.shape == ids.shape == (3, 8, 5)
    assert torch.equal(side.ids[targets], ids[targets])
    torch.testing.assert_close(side.logprobs[targets], logprobs[targets], atol=1e-6, rtol=0)
    torch.testing.assert_close(side.tail[targets], tail[targets], atol=1e-6, rtol=0)
    # Padding scores nothing, as in the cache's layout.
    assert side.ids[1, 4:].eq(0).all() and side.tail[1, 4:].eq(0).all()
    assert teacher.names() == [f"model-server (served at {model_server.url})"]


def test_a_packed_row_is_scored_sequence_by_sequence(model_server, tiny_teacher):
    first, second = [5, 9, 13, 2], [8, 3, 6, 10, 12]
    packed = {"input_ids": torch.tensor([first + second]), "position_ids": torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3, 4]])}
    assert sequence_segments(packed["input_ids"], None, packed["position_ids"]) == [(0, 0, 4), (0, 4, 9)]
    teacher = ServerTeacher(model_server.url, 3, "renormalized", timeout=10)
    side = teacher.side(packed, {}, fused=True, training=True)
    alone = teacher.side({"input_ids": torch.tensor([second])}, {}, fused=True, training=True)
    assert torch.equal(side.ids[0, 4:], alone.ids[0]) and torch.equal(side.logprobs[0, 4:], alone.logprobs[0])
    # The first sequence's last token predicts the second's first: no target, nothing scored.
    assert side.logprobs[0, 3].eq(0).all()


def test_a_mask_with_holes_is_refused_in_one_line(model_server):
    batch = {"input_ids": torch.tensor([[5, 6, 7, 8]]), "attention_mask": torch.tensor([[1, 0, 1, 1]])}
    with pytest.raises(UserInputError, match=r"^a batch row with holes in its attention mask \(row 0 "):
        ServerTeacher(model_server.url, 3, "renormalized", timeout=10).side(batch, {}, fused=True, training=True)


# --- Training against a model server, and its faults -----------------------------------------------------------------


def _server_recipe(workspace_recipe, url, **extra):
    """The workspace recipe with its teacher behind `url`: checkpoints every step, no evaluation."""
    lines = [
        line
        for line in open(workspace_recipe).read().splitlines()
        if not line.startswith(("teacher_model_", "save_strategy"))
    ]
    # The tokenizer the live teacher's folder gave the run.
    lines += [f"tokenizer_name_or_path: {os.path.join(os.path.dirname(workspace_recipe), 'teacher')}"]
    lines += ["use_teacher_server: true", f"teacher_model_server_url: {url}", "teacher_server_top_k: 5"]
    settings = {"teacher_server_timeout": 5, "save_strategy": "steps", "save_steps": 1, "seed": 0, "data_seed": 0}
    lines += [f"{key}: {value}" for key, value in {**settings, **extra}.items()]
    path = workspace_recipe.replace("recipe.yaml", "server_recipe.yaml")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def _final_weights(out_dir):
    return load_file(os.path.join(out_dir, "model.safetensors"))


def test_a_killed_server_stops_training_in_one_line_and_the_run_resumes_to_the_same_weights(workspace, capsys):
    tmp_path, recipe = workspace
    teacher = AutoModelForCausalLM.from_pretrained(tmp_path / "teacher", dtype=torch.float32)
    server = ModelServer(teacher)
    port = server.server.server_address[1]
    path = _server_recipe(recipe, server.url)
    main(["train", path, "--output_dir", str(tmp_path / "full")])
    uninterrupted = _final_weights(tmp_path / "full")

    # One request checks the server, then one per step (4 rows, one micro-batch): it dies in step 3.
    server.posts, server.answer_posts = 0, 3
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["train", path])
    assert info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("hf-distill")]
    assert lines == [lines[0]] and lines[0].startswith(
        f"hf-distill: error: the teacher server did not answer ({server.url}/v1/completions): 4 tries in "
    ), lines
    assert "check that the vLLM server is running and reachable at teacher_model_server_url" in lines[0]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert is_complete(str(out / "checkpoint-2"))

    server.stop()
    restarted = ModelServer(teacher, port=port)
    try:
        main(["train", path])  # the same command: resumes from checkpoint-2
    finally:
        restarted.stop()
    resumed = _final_weights(out)
    assert resumed.keys() == uninterrupted.keys()
    for name in resumed:
        torch.testing.assert_close(resumed[name], uninterrupted[name], atol=1e-6, rtol=0)


class SignalWhileWaiting(TrainerCallback):
    """At the start of optimizer step `step` (counted from 1), SIGTERM to this process in `after` seconds: while
    the step waits on a server that answers late."""

    def __init__(self, step: int, after: float):
        self.step, self.after = step, after

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            threading.Timer(self.after, os.kill, (os.getpid(), signal.SIGTERM)).start()


def test_sigterm_while_waiting_on_the_server_finishes_the_step_and_checkpoints(workspace, capsys):
    tmp_path, recipe = workspace
    teacher = AutoModelForCausalLM.from_pretrained(tmp_path / "teacher", dtype=torch.float32)
    server = ModelServer(teacher)
    server.delay = 1.5
    try:
        model_args, data_args, config = parse_recipe(_server_recipe(recipe, server.url, save_steps=100))
        trainer = build_trainer(model_args, data_args, config, callbacks=[SignalWhileWaiting(2, after=0.5)])
        with pytest.raises(SystemExit) as info:
            trainer.train()
    finally:
        server.stop()
    assert info.value.code == 143
    checkpoint = tmp_path / "out" / "checkpoint-2"
    assert is_complete(str(checkpoint)) and trainer.state.global_step == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("hf-distill: stopped by SIGTERM after step 2; ") and str(checkpoint) in last


# --- The stock vLLM server -------------------------------------------------------------------------------------------

K = 20


@pytest.fixture(scope="module")
def demo_batch():
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(DEMO, "tokenizer"))
    teacher = AutoModelForCausalLM.from_pretrained(os.path.join(DEMO, "teacher"), dtype=torch.float32).eval()
    rows, batch = _batch(tokenizer, n=16)
    torch.manual_seed(0)
    student = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(os.path.join(DEMO, "student_config")))
    return tokenizer, teacher, student.eval(), rows, batch


@pytest.mark.vllm
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "dense"])
@pytest.mark.parametrize(
    ("loss_type", "mode"), [("forward_kl", "renormalized"), ("reverse_kl", "tail_bucket"), ("jsd", "renormalized")]
)
def test_the_kd_loss_from_the_server_equals_the_cached_teachers(server, demo_batch, loss_type, mode, fused):
    tokenizer, teacher_model, student, rows, batch = demo_batch
    teacher = ServerTeacher(server, K, mode, timeout=60)
    teacher.check(student.config.vocab_size, tokenizer)
    served = teacher.side(batch, {}, fused=fused, training=True)
    cached = type(served)(*_cached_side(teacher_model, rows, batch, K, mode, tokenizer.pad_token_id), mode)
    spec = DivergenceSpec(loss_type, 2.0, 0.5, 0.1, 0.5, 0.0)
    targets = batch["labels"][:, 1:]
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        if fused:
            hidden = student.model(**inputs).last_hidden_state[:, :-1]
            terms = [fused_distillation_loss(hidden, lm_head(student), t, targets, spec, 64) for t in (served, cached)]
        else:
            logits = student(**inputs).logits[:, :-1]
            terms = [dense_distillation_terms(logits, t, targets, spec) for t in (served, cached)]
    tokens = terms[0].mask.sum()
    assert tokens > 100 and torch.equal(terms[0].mask, terms[1].mask)
    kd_served, kd_cached = (t.kd.sum() / tokens for t in terms)
    assert kd_cached > 1e-3  # a random student is far from the teacher: the comparison is not of two zeros
    assert abs(kd_served - kd_cached) < 1e-4, (kd_served, kd_cached)
    assert abs(terms[0].loss / tokens - terms[1].loss / tokens) < 1e-4
    # Per position, relative: tail_bucket's reverse KL at temperature 2 reaches ~20 a token, and its tail bucket
    # (log1p of minus the top-k's mass) magnifies the last digits of the two float32 log-softmaxes.
    torch.testing.assert_close(terms[0].kd, terms[1].kd, atol=1e-4, rtol=1e-4)
    print(f"\n{loss_type} {mode}: kd per token {kd_served:.6f} served, {kd_cached:.6f} cached, {tokens} tokens")


@pytest.mark.vllm
def test_on_policy_training_with_the_server_scores_the_students_completions(server, tmp_path):
    recipe = os.path.join(DEMO, "teacher_server.yaml")
    overrides = [
        "--teacher_model_server_url",
        server,
        "--output_dir",
        str(tmp_path / "out"),
        "--max_steps",
        "2",
        "--lmbda",
        "1.0",
        "--max_new_tokens",
        "12",
    ]
    overrides += ["--log_completions", "true", "--logging_steps", "1", "--per_device_train_batch_size", "4"]
    overrides += ["--eval_strategy", "no", "--save_strategy", "no"]
    model_args, data_args, config = parse_recipe(recipe, overrides)
    trainer = build_trainer(model_args, data_args, config)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    logged = [h for h in trainer.state.log_history if "kd_loss" in h]
    assert logged and all(torch.isfinite(torch.tensor(h["loss"])) and h["kd_loss"] > 0 for h in logged)
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    completions = (tmp_path / "out" / "completions.csv").read_text().splitlines()
    assert len(completions) > 1, completions
