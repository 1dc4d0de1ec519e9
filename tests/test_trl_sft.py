"""Distilling from a TRL SFT script (`hf_distill.trl_sft`): TRL's data preparation (text, chat messages,
prompt-completion, packing) feeds DistillTrainer's loss, through a trimmed copy of TRL's `sft.py`
(`tests/scripts/trl_sft_distill.py`) on the demo models."""

import json
import os
import re

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

pytest.importorskip("trl")

import trl_sft_distill  # noqa: E402

from hf_distill.trl_sft import DistillSFTConfig, DistillSFTTrainer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "recipes", "demo")
N_EXAMPLES = 8
TEMPERATURE = 2.0


def _demo_chats(n: int = N_EXAMPLES) -> list[list[dict]]:
    """The first `n` single-turn chats (a user turn, then the assistant's) of the demo data."""
    chats = []
    with open(os.path.join(DEMO, "data", "train.jsonl")) as f:
        for line in f:
            messages = json.loads(line)["messages"]
            if [m["role"] for m in messages] == ["user", "assistant"]:
                chats.append(messages)
            if len(chats) == n:
                return chats
    raise AssertionError(f"the demo data has fewer than {n} single-turn chats")


def _rows(data_format: str) -> list[dict]:
    rows = []
    for user, assistant in _demo_chats():
        question, answer = user["content"], assistant["content"]
        rows.append(
            {
                "text": {"text": f"{question} {answer}"},
                "messages": {"messages": [user, assistant]},
                "prompt_completion": {"prompt": question + " ", "completion": answer},
            }[data_format]
        )
    return rows


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    """The demo student with fresh (seeded) weights and the demo tokenizer, saved as TRL loads a model by name."""
    path = tmp_path_factory.mktemp("student")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(os.path.join(DEMO, "student_config"))).save_pretrained(
        path
    )
    AutoTokenizer.from_pretrained(os.path.join(DEMO, "tokenizer")).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """The demo teacher with `use_cache: true` in its config, as most hub models have it."""
    path = tmp_path_factory.mktemp("teacher")
    teacher = AutoModelForCausalLM.from_pretrained(os.path.join(DEMO, "teacher"))
    teacher.config.use_cache = True
    teacher.save_pretrained(path)
    return str(path)


def _data_dir(path, data_format: str) -> str:
    path.mkdir(parents=True)
    for split in ("train", "test"):
        with open(path / f"{split}.jsonl", "w") as f:
            for row in _rows(data_format):
                f.write(json.dumps(row) + "\n")
    return str(path)


def run_script(
    tmp_path,
    student_dir,
    data_format: str,
    *flags: str,
    name: str = "run",
    teacher: str = os.path.join(DEMO, "teacher"),
) -> DistillSFTTrainer:
    """`trl_sft_distill.py` as a user runs it, parsed by TrlParser from these flags, in float32 on the CPU."""
    argv = [
        "--model_name_or_path", student_dir,
        "--dataset_name", _data_dir(tmp_path / name / "data", data_format),
        "--teacher_model_name_or_path", teacher,
        "--output_dir", str(tmp_path / name / "out"),
        "--temperature", str(TEMPERATURE),
        "--alpha", "0.5",
        "--max_length", "64",
        "--learning_rate", "1e-3",
        "--adam_epsilon", "1e-6",
        "--use_cpu", "true",
        "--bf16", "false",
        "--report_to", "none",
        "--save_strategy", "no",
        "--logging_steps", "1",
        "--disable_tqdm", "true",
        "--seed", "0",
        *flags,
    ]  # fmt: skip
    return trl_sft_distill.main(*trl_sft_distill.make_parser().parse_args_and_config(argv))


# format -> (data, extra flags). `packing` is TRL's default best-fit-decreasing packing, which is padding-free: each
# batch is one row of sequences whose positions restart at 0.
CASES = {
    "text": ("text", ()),
    "messages": ("messages", ("--assistant_only_loss", "true", "--loss_type", "reverse_kl")),
    "prompt_completion": ("prompt_completion", ()),
    "prompt_completion_full": ("prompt_completion", ("--completion_only_loss", "false")),
    # The teacher and (`use_cache`) the student would build a KV cache: a forward that does takes a packed row for one
    # sequence (before, the teacher's KD attended across the packed sequences).
    "packing": ("text", ("--packing", "true", "--loss_type", "reverse_kl", "--use_cache", "true")),
}


def _divergence(student_logits, teacher_logits, loss_type: str):
    """Summed KL of the softened distributions, times T**2, from torch's own kl_div (float64)."""
    s = F.log_softmax(student_logits.double() / TEMPERATURE, dim=-1)
    t = F.log_softmax(teacher_logits.double() / TEMPERATURE, dim=-1)
    if loss_type == "forward_kl":  # KL(teacher || student)
        kl = F.kl_div(s, t, log_target=True, reduction="sum")
    else:  # KL(student || teacher)
        kl = F.kl_div(t, s, log_target=True, reduction="sum")
    return kl * TEMPERATURE**2


def _sequences(batch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(input ids, labels) of each sequence of a collated batch: each row without its padding, or, in a padding-free
    row, each packed sequence (its positions restart at 0)."""
    if "attention_mask" in batch:
        lengths = batch["attention_mask"].sum(-1).tolist()
        return [(ids[:n], labels[:n]) for ids, labels, n in zip(batch["input_ids"], batch["labels"], lengths)]
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist() + [batch["input_ids"].shape[1]]
    return [(batch["input_ids"][0, a:b], batch["labels"][0, a:b]) for a, b in zip(starts, starts[1:])]


def _expected_first_step(trainer, student_dir):
    """CE, KD and loss of the whole prepared set (one optimizer step) at the initial weights, computed here from the
    models' own logits, each sequence run alone."""
    rows = [{k: row[k] for k in ("input_ids", "labels", "seq_lengths") if k in row} for row in trainer.train_dataset]
    batch = trainer.data_collator(rows)
    student = AutoModelForCausalLM.from_pretrained(student_dir).eval()
    teacher = AutoModelForCausalLM.from_pretrained(trainer.args.teacher_model_name_or_path).eval()
    ce = kd = n = 0
    for ids, labels in _sequences(batch):
        with torch.no_grad():
            s, t = student(input_ids=ids[None]).logits[0, :-1], teacher(input_ids=ids[None]).logits[0, :-1]
        targets = labels[1:]
        mask = targets != -100
        ce += F.cross_entropy(s[mask].double(), targets[mask], reduction="sum").item()
        kd += _divergence(s[mask], t[mask], trainer.args.loss_type).item()
        n += mask.sum().item()
    return batch, ce / n, kd / n


@pytest.mark.parametrize("case", list(CASES))
def test_first_step_is_the_distillation_loss_on_sfts_labels(tmp_path, student_dir, teacher_dir, case):
    """The script trains one step on the whole set: the logged loss, ce_loss and kd_loss equal the formula computed
    here from the models' own logits, each sequence alone, and the targets are those SFT's options say."""
    data_format, flags = CASES[case]
    trainer = run_script(
        tmp_path, student_dir, data_format, "--max_steps", "1", "--per_device_train_batch_size", "8", *flags,
        teacher=teacher_dir,
    )  # fmt: skip
    batch, ce, kd = _expected_first_step(trainer, student_dir)
    log = trainer.state.log_history[0]
    assert kd > 0
    assert log["ce_loss"] == pytest.approx(ce, rel=1e-5)
    assert log["kd_loss"] == pytest.approx(kd, rel=1e-5)
    assert log["loss"] == pytest.approx(0.5 * ce + 0.5 * kd, rel=1e-5)
    assert trainer.args.loss_type == ("reverse_kl" if "reverse_kl" in flags else "forward_kl")

    tokenizer = trainer.processing_class
    targets = [[t for t in row if t != -100] for row in batch["labels"].tolist()]
    answers = [chat[1]["content"] for chat in _demo_chats()]
    if case in ("messages", "prompt_completion"):
        # Loss on the answer (and its end of turn) only: the labels SFT built, -100 elsewhere.
        assert [tokenizer.decode(ids).strip() for ids in targets] == [a + tokenizer.eos_token for a in answers]
    elif case == "packing":
        assert batch["input_ids"].shape[0] == 1 and "position_ids" in batch and "attention_mask" not in batch
        # Every token is a target but the first of each packed sequence (predicted from the one before it).
        starts = (batch["position_ids"][0] == 0).sum().item()
        assert len(targets[0]) == batch["input_ids"].shape[1] - starts
    else:
        assert all(len(ids) == n for ids, n in zip(targets, batch["attention_mask"].sum(-1).tolist(), strict=True))


@pytest.mark.parametrize("case", ["prompt_completion", "packing"])
def test_two_by_two_accumulation_equals_four_by_one(tmp_path, student_dir, case):
    """Normalised by the optimizer step's target tokens (global), not per micro-batch: 2 micro-batches of 2 reach the
    weights of 1 of 4, on examples (or packed rows) with different numbers of target tokens."""
    data_format, flags = CASES[case]

    def weights(name, batch, accumulation):
        trainer = run_script(
            tmp_path, student_dir, data_format, "--max_steps", "2", "--per_device_train_batch_size", str(batch),
            "--gradient_accumulation_steps", str(accumulation), *flags, name=name,
        )  # fmt: skip
        return trainer, {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}

    (whole, a), (split, b) = weights("4x1", 4, 1), weights("2x2", 2, 2)
    initial = AutoModelForCausalLM.from_pretrained(student_dir).state_dict()
    assert any(not torch.equal(initial[k], v) for k, v in a.items()), "training changed nothing"
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5, msg=key)
    per_row = {sum(label != -100 for label in row["labels"]) for row in whole.train_dataset}
    assert len(per_row) > 1 and whole.target_tokens_seen() == split.target_tokens_seen() > 0


def test_peft_student_from_the_scripts_model_config(tmp_path, student_dir):
    """TRL's `--use_peft --lora_*` (ModelConfig, get_peft_config) make a LoRA student, trained on the fused loss."""
    pytest.importorskip("peft")
    trainer = run_script(
        tmp_path, student_dir, "text", "--max_steps", "1", "--use_peft", "true", "--lora_r", "4",
        "--lora_target_modules", "q_proj", "v_proj", "--lora_dropout", "0.0",
    )  # fmt: skip
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert trainer.fused_loss and trainer.state.log_history[0]["kd_loss"] > 0
    assert os.path.isfile(os.path.join(trainer.args.output_dir, "adapter_config.json"))


def test_evaluation_reports_the_distillation_metrics(tmp_path, student_dir):
    """The script's eval split, prepared by SFT (packed, as `packing` asks), is evaluated by DistillTrainer."""
    trainer = run_script(
        tmp_path, student_dir, "text", "--max_steps", "1", "--packing", "true", "--eval_strategy", "steps",
        "--eval_steps", "1", "--per_device_eval_batch_size", "8",
    )  # fmt: skip
    (metrics,) = [h for h in trainer.state.log_history if "eval_loss" in h]
    assert {"eval_ce_loss", "eval_kd_loss", "eval_teacher_agreement", "eval_perplexity"} <= metrics.keys()
    assert metrics["eval_loss"] == pytest.approx(0.5 * metrics["eval_ce_loss"] + 0.5 * metrics["eval_kd_loss"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"loss_type": "dft"}, "loss_type='dft' is SFTConfig's loss; in DistillSFTConfig loss_type is the divergence"),
        ({"loss_type": "nll"}, "loss_type='nll' is SFTConfig's loss"),
        ({"router_aux_loss_coef": 0.01}, "router_aux_loss_coef=0.01: DistillTrainer's loss has no Mixture-of-Experts"),
    ],
)
def test_what_the_loss_would_ignore_is_refused(tmp_path, overrides, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        DistillSFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], **overrides)


def test_args_must_be_a_distill_sft_config(tmp_path):
    from hf_distill import DistillConfig

    args = DistillConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    with pytest.raises(TypeError, match="^args must be a DistillSFTConfig, got DistillConfig$"):
        DistillSFTTrainer(model="unused", args=args, train_dataset=None)


def test_the_divergence_is_put_back_when_sfttrainer_fails(tmp_path):
    """SFTTrainer is shown loss_type 'nll' while it builds; the divergence is back even when it raises."""
    args = DistillSFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], alpha=1.0, loss_type="tvd")
    with pytest.raises(ValueError, match="train_dataset"):
        DistillSFTTrainer(model="unused", args=args, train_dataset=None)
    assert args.loss_type == "tvd"
