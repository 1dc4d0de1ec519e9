"""Inputs and faults that used to train silently into something wrong: each is now refused with one line naming what
is wrong (or warned about, or survived). docs/errors.md lists the same rows."""

import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from test_trainer import assert_same_weights, make_args
from testing_utils import error_line, pad_collator, tiny_llama, variable_length_dataset, word_tokenizer, write_split
from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM, TrainerCallback

from hf_distill import DistillConfig, DistillTrainer
from hf_distill.commands.recipe import RecipeError, load_yaml
from hf_distill.data.datasets import DistillDataCollator
from hf_distill.models.causal_lm import check_weight_files, load_causal_lm
from hf_distill.run.checkpoints import CHECKPOINT_MARKER, damage, is_complete, last_complete_checkpoint, mark_complete
from hf_distill.run.lock import LOCK_NAME, OutputDirInUseError, acquire, check_free, run_lock
from hf_distill.teachers.numerics import NonFiniteTeacherError, _bad_rows

STEPS_FIX = "(or a fraction in (0, 1) of the run's steps)"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["--max_steps", "-5"], "invalid max_steps (max_steps=-5): Trainer would read it as -1 and train whole "
         "epochs; set max_steps to 1 or more, or -1 to train num_train_epochs"),
        (["--max_steps", "0"], "invalid max_steps (max_steps=0): Trainer would read it as -1 and train whole epochs; "
         "set max_steps to 1 or more, or -1 to train num_train_epochs"),
        (["--max_steps", "-1", "--num_train_epochs", "0"], "invalid num_train_epochs (num_train_epochs=0): with "
         "max_steps=-1 nothing would train, yet a model card would be written; set num_train_epochs > 0, or "
         "max_steps >= 1"),
        (["--per_device_train_batch_size", "0"], "invalid per_device_train_batch_size "
         "(per_device_train_batch_size=0): must be >= 1; set per_device_train_batch_size to 1 or more"),
        (["--per_device_eval_batch_size", "0"], "invalid per_device_eval_batch_size (per_device_eval_batch_size=0): "
         "must be >= 1; set per_device_eval_batch_size to 1 or more"),
        (["--gradient_accumulation_steps", "0"], "invalid gradient_accumulation_steps "
         "(gradient_accumulation_steps=0): must be >= 1; set gradient_accumulation_steps to 1 or more"),
        (["--fp16", "true"], "invalid fp16 (fp16=True): this run is on the cpu, which has no float16 autocast; set "
         "fp16: false (bf16 works on cpu)"),
        (["--label_names", "target"], "label_names other than labels (label_names=['target']): DistillTrainer reads "
         "the targets from the batch's 'labels'; name that column 'labels' and leave label_names unset"),
        (["--temperature", "inf"], "invalid temperature (temperature=inf): must be finite; set a temperature in "
         "[0.05, 20], e.g. 2.0"),
        (["--temperature", "nan"], "invalid value (DistillConfig): temperature must be > 0, got temperature=nan; fix "
         "it in the recipe or on the command line"),
        (["--save_strategy", "steps", "--save_steps", "0"], "invalid save_steps (save_steps=0): save_strategy='steps' "
         f"needs a positive interval; set save_steps to a number of steps >= 1 {STEPS_FIX}"),
        (["--save_strategy", "steps", "--save_steps", "-3"], "invalid save_steps (save_steps=-3): "
         f"save_strategy='steps' needs a positive interval; set save_steps to a number of steps >= 1 {STEPS_FIX}"),
        # Transformers would replace eval_steps: 0 by logging_steps without a word.
        (["--eval_strategy", "steps", "--eval_steps", "0"], "invalid eval_steps (eval_steps=0): eval_strategy='steps' "
         f"needs a positive interval; set eval_steps to a number of steps >= 1 {STEPS_FIX}"),
        (["--eval_strategy", "steps", "--eval_steps", "2.5"], "invalid eval_steps (eval_steps=2.5): above 1 it counts "
         f"steps, which are whole; set eval_steps to a number of steps >= 1 {STEPS_FIX}"),
        (["--logging_steps", "0"], "invalid logging_steps (logging_steps=0): logging_strategy='steps' needs a "
         f"positive interval; set logging_steps to a number of steps >= 1 {STEPS_FIX}"),
        (["--report_to", "no_such_tracker"], "invalid report_to (report_to=['no_such_tracker']): 'no_such_tracker' is "
         "not an integration transformers knows; use some of azure_ml, clearml, codecarbon, comet_ml, dagshub, "
         "dvclive, flyte, kubeflow, mlflow, neptune, swanlab, tensorboard, trackio, wandb, 'all' or 'none'"),
        (["--output_dir", ""], "invalid output_dir (output_dir=''): an empty path would write the run into the "
         "current folder; name a folder"),
    ],
)  # fmt: skip
def test_training_arguments_trainer_would_mishandle(workspace, capsys, no_weights, override, message):  # noqa: F811
    _, recipe = workspace
    assert error_line(capsys, ["train", recipe, *override]) == f"hf-distill: error: {message}"


def test_check_validates_an_fp16_recipe_as_if_on_the_cpu(workspace, capsys):
    _, recipe = workspace
    with open(recipe, "a") as f:
        f.write("fp16: true\n")
    from hf_distill.cli import main

    main(["check", str(recipe)])
    assert capsys.readouterr().out.strip() == f"{recipe}: ok"


@pytest.mark.parametrize(("temperature", "warned"), [(1e6, "uniform"), (0.01, "one-hot"), (2.0, None)])
def test_temperature_outside_the_sane_range_is_warned_about(tmp_path, caplog, temperature, warned):
    with caplog.at_level(logging.WARNING, logger="hf_distill.arguments.training_checks"):
        DistillConfig(output_dir=str(tmp_path), temperature=temperature, report_to="none")
    lines = [r.getMessage() for r in caplog.records if r.name == "hf_distill.arguments.training_checks"]
    if warned is None:
        assert lines == []
    else:
        assert lines == [
            f"temperature={temperature} is outside [0.05, 20.0]: the softened distributions are nearly {warned}, so "
            "the divergence says little about the teacher"
        ]


def test_a_key_given_twice_in_a_recipe_names_the_key_and_both_lines(workspace, capsys, no_weights):  # noqa: F811
    _, recipe = workspace
    lines = open(recipe).read().splitlines()
    with open(recipe, "a") as f:
        f.write("beta: 0.2\nskew_lambda: 0.2\nbeta: 0.4\n")
    first, second = len(lines) + 1, len(lines) + 3
    message = (
        f"hf-distill: error: duplicate key ({recipe}:{second}): 'beta' is set at lines {first} and {second} (YAML "
        "would keep the last without a word); keep one"
    )
    assert error_line(capsys, ["train", str(recipe)]) == message
    assert error_line(capsys, ["check", str(recipe)]) == message


def test_a_key_given_twice_inside_a_round_is_refused_too(tmp_path):
    recipe = tmp_path / "rounds.yaml"
    recipe.write_text("alpha: 0.5\nrounds:\n  - output_dir: a\n    max_steps: 2\n    max_steps: 3\n")
    with pytest.raises(RecipeError) as info:
        load_yaml(str(recipe))
    assert str(info.value) == (
        f"duplicate key ({recipe}:5): 'max_steps' is set at lines 4 and 5 (YAML would keep the last without a word); "
        "keep one"
    )
    # Mappings of the same key at different places are not duplicates.
    recipe.write_text("rounds:\n  - max_steps: 2\n  - max_steps: 3\n")
    assert load_yaml(str(recipe)) == {"rounds": [{"max_steps": 2}, {"max_steps": 3}]}


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [
                {"id": "a", "messages": [{"role": "user", "content": "w1"}, {"role": "assistant", "content": "w2"}]},
                {"id": "b", "messages": [{"role": "user", "content": "w1"}, {"role": "assistant", "text": "w2"}]},
            ],
            "example cannot be read (split 'train', example 1, id 'b'): it cannot be read as 'messages': turn 1 (role "
            "'assistant') has no 'content', which each turn needs (its keys: ['role', 'text']); fix the example, or "
            "set dataset_format to the format of the data",
        ),
        (
            [{"messages": [{"role": "human", "content": "w1"}, {"role": "gpt", "content": "w2"}]}],
            "example cannot be read (split 'train', example 0): it cannot be read as 'messages': turn 0 has "
            "role='human', not one of system, developer, user, assistant, tool, ipython (its keys: ['content', "
            "'role']); fix the example, or set dataset_format to the format of the data",
        ),
    ],
)
def test_chat_turns_without_content_or_with_an_unknown_role(workspace, capsys, no_weights, rows, message):  # noqa: F811
    tmp_path, recipe = workspace
    data = write_split(tmp_path, rows)
    line = error_line(capsys, ["train", recipe, "--dataset_name", data, "--dataset_eval_split", "train"])
    assert line == f"hf-distill: error: {message}"


def deepen_config(folder, layers):
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = layers
    (folder / "config.json").write_text(json.dumps(config))


TEACHER_MISSING = (
    "9 tensors missing (model.layers.2.input_layernorm.weight, model.layers.2.mlp.down_proj.weight, "
    "model.layers.2.mlp.gate_proj.weight, ...): transformers would initialise missing tensors randomly and drop "
    "unexpected ones; use the config.json the weights were saved with, or download the model again"
)


@pytest.mark.parametrize("command", ["train", "check"])
def test_teacher_whose_config_has_more_layers_than_its_weights(workspace, capsys, no_weights, command):  # noqa: F811
    tmp_path, recipe = workspace
    deepen_config(tmp_path / "teacher", 3)
    teacher = tmp_path / "teacher"
    line = error_line(capsys, [command, recipe])
    assert line == (
        f"hf-distill: error: weights that do not match config.json (teacher_model_name_or_path='{teacher}'): "
        f"{TEACHER_MISSING}"
    )


def test_teacher_whose_weights_hold_more_layers_than_its_config(workspace, capsys, no_weights):  # noqa: F811
    tmp_path, recipe = workspace
    deepen_config(tmp_path / "teacher", 1)
    line = error_line(capsys, ["train", recipe])
    assert line.startswith(
        "hf-distill: error: weights that do not match config.json (teacher_model_name_or_path="
        f"'{tmp_path / 'teacher'}'): 9 tensors unexpected (model.layers.1.input_layernorm.weight, "
    )


@pytest.mark.parametrize("damage", ["truncated", "deleted", "shard deleted"])
def test_teacher_weight_file_truncated_or_missing(workspace, capsys, no_weights, damage):  # noqa: F811
    tmp_path, recipe = workspace
    teacher = tmp_path / "teacher"
    weights = teacher / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:100])
        expected = f"model weight file cannot be read (teacher_model_name_or_path='{teacher}'): model.safetensors: "
    elif damage == "deleted":
        weights.unlink()
        expected = (
            f"no model weights (teacher_model_name_or_path='{teacher}'): the folder holds none of model.safetensors, "
            "model.safetensors.index.json, pytorch_model.bin, pytorch_model.bin.index.json; download the model "
            "again, or point to the folder that holds its weights"
        )
    else:
        weights.unlink()
        tiny_llama(seed=2, hidden=48, layers=2).save_pretrained(teacher, max_shard_size="20KB")
        shards = sorted(teacher.glob("model-*.safetensors"))
        shards[1].unlink()
        expected = (
            f"model weight files missing (teacher_model_name_or_path='{teacher}'): 1 files named by "
            f"model.safetensors.index.json are not there ({shards[1].name}); download the model again"
        )
    for command in ("train", "check"):
        line = error_line(capsys, [command, recipe])
        assert line.startswith(f"hf-distill: error: {expected}"), line


def test_sharded_and_tied_teachers_pass_the_weights_check(tmp_path):
    """No false alarm: a sharded folder, a model whose LM head is tied to its embedding (stored once), and a mixture
    of experts whose checkpoint names are converted on load."""
    sharded = tiny_llama(seed=2, hidden=48, layers=2)
    sharded.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 1
    tied_config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, tie_word_embeddings=True,
    )  # fmt: skip
    LlamaForCausalLM(tied_config).save_pretrained(tmp_path / "tied")
    with safe_open(str(tmp_path / "tied" / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in f.keys()
    moe_config = MixtralConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, num_local_experts=2,
    )  # fmt: skip
    # Saved with per-expert tensors that transformers fuses on load: names differ from the model's, and that is fine.
    MixtralForCausalLM(moe_config).save_pretrained(tmp_path / "moe")
    for name in ("sharded", "tied", "moe"):
        folder = str(tmp_path / name)
        check_weight_files(folder, "teacher_model_name_or_path", AutoConfig.from_pretrained(folder))
        load_causal_lm(folder, "teacher_model_name_or_path")


def test_load_refuses_a_mismatch_the_header_check_cannot_see(tmp_path, monkeypatch):
    """The load itself refuses missing tensors too (models whose checkpoints transformers converts on load)."""
    tiny_llama(seed=2, hidden=48, layers=2).save_pretrained(tmp_path / "teacher")
    deepen_config(tmp_path / "teacher", 3)
    monkeypatch.setattr("hf_distill.models.causal_lm.check_weight_files", lambda *args: None)
    with pytest.raises(ValueError) as info:
        load_causal_lm(str(tmp_path / "teacher"), "teacher_model_name_or_path")
    assert str(info.value) == (
        f"weights that do not match config.json (teacher_model_name_or_path='{tmp_path / 'teacher'}'): "
        f"{TEACHER_MISSING}"
    )


def teacher_trainer(tmp_path, teacher, loss_chunk_size):
    dataset = variable_length_dataset().map(lambda _, i: {"id": f"ex-{i}"}, with_indices=True)
    return DistillTrainer(
        model=tiny_llama(seed=1),
        teacher_model=teacher,
        args=make_args(
            tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=3,
            loss_chunk_size=loss_chunk_size,
        ),
        train_dataset=dataset,
        data_collator=DistillDataCollator(word_tokenizer()),
    )  # fmt: skip


def nonfinite_teacher_message(step, ids):
    return (
        f"teacher produced NaN or inf (step {step}): the teacher (teacher 0), at target tokens of examples "
        f"{', '.join(ids)}; check its weights, or load it in float32 (teacher_model_init_kwargs: {{dtype: "
        "float32}) if it overflows"
    )


@pytest.mark.parametrize("loss_chunk_size", [0, 1024])
@pytest.mark.parametrize("poison", ["weights", "head", "one example at step 2"])
def test_a_teacher_with_nonfinite_outputs_stops_the_run_at_that_step(tmp_path, loss_chunk_size, poison, caplog):
    teacher = tiny_llama(seed=2)
    if poison == "weights":
        with torch.no_grad():
            teacher.model.norm.weight[3] = float("nan")
    elif poison == "head":
        with torch.no_grad():
            teacher.lm_head.weight[5, 0] = float("inf")
    with caplog.at_level(logging.WARNING, logger="hf_distill.models.hidden_states"):
        trainer = teacher_trainer(tmp_path, teacher, loss_chunk_size)
    if poison == "one example at step 2":

        def poison_row_1(module, args, output):
            if trainer.state.global_step + 1 == 2:
                output.last_hidden_state[1] = float("nan")
            return output

        teacher.get_decoder().register_forward_hook(poison_row_1)
    # Poisoned weights give non-finite logits on the trainer's probe: the dense path, whose logits are checked (the
    # chunked loss never has them). A NaN-free probe keeps the chunked path, whose hidden states are checked.
    assert trainer.uses_fused_loss("train") == (loss_chunk_size > 0 and poison == "one example at step 2")
    probe_failed = (
        "LlamaForCausalLM takes the dense loss (full logits), because its logits on a probe input are not finite"
    )
    assert (probe_failed in caplog.text) == (loss_chunk_size > 0 and poison != "one example at step 2")
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(NonFiniteTeacherError) as info:
        trainer.train()
    if poison == "one example at step 2":
        # The first micro-batch of step 2; only its second example was poisoned.
        assert str(info.value) == nonfinite_teacher_message(2, [trainer._step_ids[1]])
    else:
        assert str(info.value) == nonfinite_teacher_message(1, trainer._step_ids[:2])
        assert_same_weights(trainer.model.state_dict(), before, atol=0)  # stopped before any update


def test_minus_inf_teacher_logits_and_nan_at_padding_are_not_errors():
    """A token ruled out (-inf logit) is a valid distribution, and positions that are no target are never read."""
    logits = torch.zeros(2, 3, 5)
    logits[0, 0, 1] = float("-inf")
    logits[1, 2] = float("nan")
    targets = torch.tensor([[4, 4, 4], [4, 4, -100]])
    assert _bad_rows(logits, targets, allow_minus_inf=True).tolist() == [False, False]
    targets[1, 2] = 4
    assert _bad_rows(logits, targets, allow_minus_inf=True).tolist() == [False, True]
    assert _bad_rows(logits, targets, allow_minus_inf=False).tolist() == [True, True]


FAULT_SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "fault_run.py")


def subprocess_env():
    # The inherited PYTHONPATH goes first: the library under test, not an installed copy, must be the one imported.
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), os.path.dirname(__file__)) if p)
    return dict(os.environ, PYTHONPATH=path)


def run_script(script, *args, timeout=300):
    command = [sys.executable, script, *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=subprocess_env())


def run_script_code(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env())


def fake_checkpoint(folder, step, files):
    path = folder / f"checkpoint-{step}"
    path.mkdir()
    for name, content in files.items():
        (path / name).write_bytes(content)
    mark_complete(str(path), step)
    return path


def test_the_marker_lists_every_file_with_its_size_and_small_ones_with_a_checksum(tmp_path):
    path = fake_checkpoint(tmp_path, 3, {"optimizer.pt": b"o" * 10, "rng_state.pth": b"r"})
    (path / "sub").mkdir()
    marker = json.loads((path / CHECKPOINT_MARKER).read_text())
    assert marker["global_step"] == 3
    assert marker["files"] == {
        "optimizer.pt": {"size": 10, "sha256": hashlib.sha256(b"o" * 10).hexdigest()},
        "rng_state.pth": {"size": 1, "sha256": hashlib.sha256(b"r").hexdigest()},
    }
    assert damage(str(path)) is None


@pytest.mark.parametrize(
    ("harm", "problem"),
    [
        (lambda p: (p / "optimizer.pt").unlink(), "optimizer.pt is missing"),
        (lambda p: (p / "optimizer.pt").write_bytes(b"o" * 4), "optimizer.pt has 4 bytes, 10 when it was written"),
        (lambda p: (p / "scheduler.pt").write_bytes(b"t"), "scheduler.pt has changed since it was written (checksum)"),
        (lambda p: (p / CHECKPOINT_MARKER).write_text("{"), f"{CHECKPOINT_MARKER} cannot be read ("),
    ],
)
def test_a_damaged_checkpoint_is_skipped_for_the_previous_complete_one(tmp_path, caplog, harm, problem):
    files = {"optimizer.pt": b"o" * 10, "scheduler.pt": b"s"}
    fake_checkpoint(tmp_path, 1, files)
    (tmp_path / "checkpoint-2").mkdir()  # partial: never marked
    fake_checkpoint(tmp_path, 3, files)
    harm(tmp_path / "checkpoint-3")
    with caplog.at_level(logging.WARNING, logger="hf_distill.run.checkpoints"):
        assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-1")
    [warning] = [r.getMessage() for r in caplog.records if r.name == "hf_distill.run.checkpoints"]
    assert warning.startswith(f"skipping damaged checkpoint {tmp_path / 'checkpoint-3'}: {problem}")
    assert warning.endswith("; resuming from an earlier one")


def test_no_undamaged_checkpoint_left_is_an_error_and_old_markers_are_trusted(tmp_path):
    fake_checkpoint(tmp_path, 1, {"optimizer.pt": b"o"})
    (tmp_path / "checkpoint-1" / "optimizer.pt").unlink()
    with pytest.raises(ValueError) as info:
        last_complete_checkpoint(str(tmp_path))
    assert str(info.value) == (
        f"every checkpoint is damaged (output_dir={str(tmp_path)!r}): checkpoint-1: optimizer.pt is missing; "
        "restore the files, or delete the checkpoints to train from the start"
    )
    # A marker of an earlier version lists no files: the checkpoint is taken as it is.
    (tmp_path / "checkpoint-1" / CHECKPOINT_MARKER).write_text('{"global_step": 1}')
    assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-1")
    # ... unless its trainer state does not read, which no checksum of such a marker can catch.
    (tmp_path / "checkpoint-1" / "trainer_state.json").write_text('{"global_step": ')
    assert damage(str(tmp_path / "checkpoint-1")) == (
        "trainer_state.json cannot be read (Expecting value: line 1 column 17 (char 16))"
    )


def test_a_deleted_optimizer_file_resumes_from_the_checkpoint_before_to_the_same_weights(tmp_path):
    result = run_script(FAULT_SCRIPT, tmp_path, 6, "none")
    assert result.returncode == 0, result.stderr[-2000:]
    uninterrupted = torch.load(tmp_path / "final.pt")
    (tmp_path / "checkpoint-6" / "optimizer.pt").unlink()
    result = run_script(FAULT_SCRIPT, tmp_path, 6, "resume")
    assert result.returncode == 0, result.stderr[-2000:]
    damaged = tmp_path / "checkpoint-6"
    assert (
        f"skipping damaged checkpoint {damaged}: optimizer.pt is missing; resuming from an earlier one"
        in result.stderr
    )
    assert_same_weights(torch.load(tmp_path / "final.pt"), uninterrupted)
    assert damage(str(tmp_path / "checkpoint-6")) is None  # rewritten whole by the resumed run


def dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_second_run_on_the_same_output_dir_refuses_and_a_dead_runs_lock_is_taken_over(tmp_path, caplog):
    out = tmp_path / "out"
    lock = out / LOCK_NAME
    with run_lock(str(out)):
        holder = json.loads(lock.read_text())
        assert (holder["host"], holder["pid"]) == (socket.gethostname(), os.getpid())
        other = run_script_code(f"from hf_distill.run.lock import acquire; acquire({str(out)!r})")
        assert other.returncode == 1
        assert other.stderr.strip().splitlines()[-1] == (
            f"hf_distill.run.lock.OutputDirInUseError: output_dir in use (output_dir={str(out)!r}): another run holds "
            f"it (pid {os.getpid()} on this host, since {holder['since']}); wait for it to end, or set another "
            "output_dir"
        )
    assert not lock.exists()  # released
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": (pid := dead_pid()), "since": "then"}))
    with caplog.at_level(logging.WARNING, logger="hf_distill.run.lock"), run_lock(str(out)):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert [r.getMessage() for r in caplog.records if r.name == "hf_distill.run.lock"] == [
        f"taking over the lock of output_dir={str(out)!r} from a dead run (pid {pid} on this host, no longer running)"
    ]
    lock.write_text(json.dumps({"host": "elsewhere", "pid": 7, "since": "then"}))
    with pytest.raises(OutputDirInUseError) as info, run_lock(str(out)):
        pass
    assert str(info.value) == (
        f"output_dir in use (output_dir={str(out)!r}): another run holds it (pid 7 on host 'elsewhere', since then); "
        f"wait for it to end, or set another output_dir (if that run is dead, delete {lock})"
    )


def test_training_holds_the_lock_and_the_cli_refuses_a_second_run(workspace, capsys, no_weights):  # noqa: F811
    tmp_path, recipe = workspace
    seen = []

    class LockSeen(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            seen.append(json.loads((tmp_path / "run" / LOCK_NAME).read_text())["pid"])

    trainer = DistillTrainer(
        model=tiny_llama(seed=1),
        teacher_model=tiny_llama(seed=2),
        args=make_args(tmp_path / "run", max_steps=2, per_device_train_batch_size=2),
        train_dataset=variable_length_dataset(n=4),
        data_collator=pad_collator,
        callbacks=[LockSeen()],
    )
    trainer.train()
    assert seen == [os.getpid()] * 2 and not (tmp_path / "run" / LOCK_NAME).exists()
    # Another live process of this host holds the lock (this test's parent; a lock this process holds is its own).
    (tmp_path / "out").mkdir()
    holder = {"host": socket.gethostname(), "pid": os.getppid(), "since": "then"}
    (tmp_path / "out" / LOCK_NAME).write_text(json.dumps(holder))
    line = error_line(capsys, ["train", recipe, "--max_steps", "1"])
    assert line == (
        f"hf-distill: error: output_dir in use (output_dir='{tmp_path / 'out'}'): another run holds it (pid "
        f"{os.getppid()} on this host, since then); wait for it to end, or set another output_dir"
    )


SIGNAL_SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "signal_run.py")


@pytest.fixture(scope="module")
def uninterrupted_signal_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    result = run_script(SIGNAL_SCRIPT, out, 5, "none")
    assert result.returncode == 0, result.stderr[-2000:]
    # The schedule saves at the end only: an earlier checkpoint below comes from the signal.
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-5"]
    return torch.load(out / "final.pt")


@pytest.mark.parametrize(
    ("mode", "name", "code"),
    # "repeated": a second SIGTERM at once, as a launcher forwards a scheduler's: the same request, not a second one.
    [("SIGTERM", "SIGTERM", 143), ("SIGINT", "SIGINT", 130), ("repeated", "SIGTERM", 143)],
)
def test_a_stop_signal_finishes_the_step_saves_and_resumes_to_the_same_weights(
    tmp_path, uninterrupted_signal_run, mode, name, code
):
    result = run_script(SIGNAL_SCRIPT, tmp_path, 5, mode, 3)
    assert result.returncode == code, result.stderr[-2000:]
    checkpoint = tmp_path / "checkpoint-3"
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-3"]
    assert is_complete(str(checkpoint)) and damage(str(checkpoint)) is None
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        f"hf-distill: stopped by {name} after step 3; {checkpoint} is complete: rerun the same command to resume "
        "from it"
    )
    assert "Traceback" not in result.stderr and not (tmp_path / LOCK_NAME).exists()
    result = run_script(SIGNAL_SCRIPT, tmp_path, 5, "resume")
    assert result.returncode == 0, result.stderr[-2000:]
    assert_same_weights(torch.load(tmp_path / "final.pt"), uninterrupted_signal_run)


def test_a_second_signal_stops_at_once(tmp_path):
    """Sent again more than `REPEAT_SECONDS` after the first, as a person who wants the run to stop now does."""
    result = run_script(SIGNAL_SCRIPT, tmp_path, 5, "twice", 3)
    assert result.returncode == -signal.SIGTERM
    assert not list(tmp_path.glob("checkpoint-*"))


def test_the_lock_works_without_hard_links(tmp_path, monkeypatch):
    def no_links(*args):
        raise PermissionError("hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    with run_lock(str(tmp_path)):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
        with pytest.raises(OutputDirInUseError):
            acquire(str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_resuming_with_another_student_architecture_names_both(tmp_path):
    def trainer(student):
        return DistillTrainer(
            model=student,
            teacher_model=tiny_llama(seed=2),
            args=make_args(tmp_path, max_steps=1, per_device_train_batch_size=2, save_strategy="steps", save_steps=1),
            train_dataset=variable_length_dataset(n=4),
            data_collator=pad_collator,
        )

    trainer(tiny_llama(seed=1, hidden=32, layers=1)).train()
    other = trainer(tiny_llama(seed=1, hidden=48, layers=2))
    with pytest.raises(ValueError) as info:
        other.train(resume_from_checkpoint=True)
    assert str(info.value) == (
        f"checkpoint of another architecture (resume_from_checkpoint={str(tmp_path / 'checkpoint-1')!r}): it holds "
        "another architecture than the student (checkpoint vs student: hidden_size 32 vs 48, num_hidden_layers 1 vs "
        "2, intermediate_size 64 vs 96); resume with the student it was trained from, or set another output_dir"
    )
    trainer(tiny_llama(seed=1, hidden=32, layers=1)).train(resume_from_checkpoint=True)  # the same one resumes


def test_lock_blocks_nest_and_the_outermost_releases(tmp_path):
    """The pipeline holds the lock for the whole run and `DistillTrainer.train` takes it again inside."""
    with run_lock(str(tmp_path)):
        with run_lock(str(tmp_path)):
            check_free(str(tmp_path))  # this process's own lock is no other run's
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()  # still held
    assert not (tmp_path / LOCK_NAME).exists()
