"""Cross-tokenizer distillation end to end: config checks, `hf-distill train` with a teacher of another tokenizer,
exactness under any batch split, and resume."""

import json

import pytest
import torch
from testing_utils import (
    DIGIT_WORDS,
    _trainer,
    _weights,
    cross_tokenizer_recipe,
    digit_tokenizer,
    pad_collator,
    tiny_llama,
    variable_length_dataset,
    word_tokenizer,
)

from hf_distill import DistillConfig, DistillTrainer
from hf_distill.cli import main


def error_line(capsys, argv):
    capsys.readouterr()  # what building the workspace printed
    with pytest.raises(SystemExit):
        main(argv)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    return lines[0]


@pytest.mark.parametrize(
    "fields, message",
    [
        (
            dict(cross_tokenizer="bpe"),
            "invalid cross_tokenizer (cross_tokenizer='bpe'): not one of its choices; use one of off, uld, aligned",
        ),
        (dict(cross_tokenizer="uld", cross_tokenizer_uld_weight=0.5), "read by cross_tokenizer 'aligned' only"),
        (
            dict(cross_tokenizer="uld", loss_type="jsd"),
            "(loss_type='jsd', cross_tokenizer='uld'): ULD is its own distance and reads no loss_type",
        ),
        (
            dict(cross_tokenizer="aligned", cross_tokenizer_uld_weight=-1.0),
            "invalid cross_tokenizer_uld_weight (cross_tokenizer_uld_weight=-1.0): must be >= 0",
        ),
        (dict(teacher_tokenizer_name_or_path="tok"), "and cross_tokenizer is 'off'"),
        (dict(cross_tokenizer="uld", alpha=1.0), "(cross_tokenizer='uld', alpha=1.0): alpha=1.0 loads no teacher"),
        (
            dict(cross_tokenizer="uld", teacher_cache_dir="cache"),
            "(cross_tokenizer='uld', teacher_cache_dir='cache'): the cache holds top-k ids",
        ),
        (dict(cross_tokenizer="uld", lmbda=0.5), "generation (cross_tokenizer='uld', lmbda=0.5): generated text"),
        (dict(cross_tokenizer="aligned", seq_kd=True), "(cross_tokenizer='aligned', seq_kd=True): generated text"),
        (
            dict(cross_tokenizer="uld", teacher_model_name_or_path=["a", "b"]),
            "it takes one teacher, got an ensemble of 2",
        ),
    ],
)
def test_config_refuses_what_it_cannot_compute(tmp_path, fields, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DistillConfig(
            output_dir=str(tmp_path),
            teacher_model_name_or_path=fields.pop("teacher_model_name_or_path", "t"),
            **fields,
        )


def test_another_tokenizer_without_the_option_is_one_line_naming_both_sizes(workspace, capsys, no_weights):
    tmp_path, recipe = workspace
    cross = cross_tokenizer_recipe(tmp_path, recipe)
    line = error_line(capsys, ["train", cross, "--cross_tokenizer", "off"])
    assert "teacher and student tokenizers differ" in line and "64 vs 17 tokens" in line
    assert "cross_tokenizer: uld or aligned" in line


def test_teacher_tokenizer_that_does_not_load_or_is_slow(workspace, capsys, no_weights):
    tmp_path, recipe = workspace
    cross = cross_tokenizer_recipe(tmp_path, recipe)
    line = error_line(capsys, ["train", cross, "--teacher_tokenizer_name_or_path", str(tmp_path / "data")])
    assert line.startswith(
        f"hf-distill: error: teacher tokenizer cannot be read (teacher_tokenizer_name_or_path='{tmp_path / 'data'}')"
    )
    tiny_llama(seed=0, vocab=10).config.save_pretrained(tmp_path / "teacher_b")  # fewer logits than its 17 tokens
    line = error_line(capsys, ["train", cross])
    assert "the teacher's tokenizer has 17 tokens but the teacher has 10 logits" in line
    from transformers import PreTrainedTokenizer

    class Slow(PreTrainedTokenizer):
        is_fast = False

    from hf_distill.models.loading import check_offsets

    with pytest.raises(ValueError, match="^slow tokenizer .*gives no character offsets"):
        check_offsets(Slow.__new__(Slow), "teacher_tokenizer_name_or_path='x'", "uld")


def test_check_reads_the_teacher_tokenizer(workspace, capsys):
    tmp_path, recipe = workspace
    cross = cross_tokenizer_recipe(tmp_path, recipe)
    main(["check", cross])
    line = error_line(capsys, ["check", cross, "--teacher_tokenizer_name_or_path", str(tmp_path / "nothing")])
    assert "teacher_tokenizer_name_or_path" in line and "no such folder" in line
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "teacher_b" / name).unlink()
    line = error_line(capsys, ["check", cross])
    assert f"tokenizer cannot be read (teacher_model_name_or_path='{tmp_path / 'teacher_b'}')" in line


@pytest.mark.parametrize("mode", ["uld", "aligned"])
def test_cli_trains_with_a_teacher_of_another_tokenizer(workspace, mode, caplog):
    tmp_path, recipe = workspace
    cross = cross_tokenizer_recipe(tmp_path, recipe, mode)
    main(["train", cross, "--max_steps", "2"])
    out = tmp_path / "out"
    state = json.loads((out / "trainer_state.json").read_text())
    kd = [entry["kd_loss"] for entry in state["log_history"] if "kd_loss" in entry]
    assert kd and all(value > 0 for value in kd)
    eval_results = json.loads((out / "eval_results.json").read_text())
    assert eval_results["eval_kd_loss"] > 0
    card = (out / "README.md").read_text()
    assert f"| Cross-tokenizer | {mode}: the teacher has its own tokenizer" in card
    assert ("* ULD |" if mode == "uld" else "* (jsd on shared tokens + ULD) |") in card
    assert "target tokens lie in no span aligned" in caplog.text
    assert "dense path" in caplog.text  # the chunked loss falls back, with one logged reason


def _assert_same(a, b, atol=1e-5):
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=key)


@pytest.mark.parametrize("mode", ["uld", "aligned"])
def test_batch_split_invariance(workspace, mode):
    """8 x 1 and 2 x 4 micro-batches reach the same weights and losses with a teacher of another tokenizer."""
    tmp_path, recipe = workspace
    cross = cross_tokenizer_recipe(tmp_path, recipe, mode, extra="adam_epsilon: 1.0e-6\n")
    whole = _trainer(tmp_path, cross, output_dir=tmp_path / "a", per_device_train_batch_size=8, max_steps=3)
    split = _trainer(
        tmp_path,
        cross,
        output_dir=tmp_path / "b",
        per_device_train_batch_size=2,
        gradient_accumulation_steps=4,
        max_steps=3,
    )
    initial = _weights(whole)
    whole.train()
    split.train()
    assert any(not torch.equal(initial[k], v) for k, v in _weights(whole).items())
    _assert_same(_weights(whole), _weights(split))
    for key in ("loss", "kd_loss"):
        a = [h[key] for h in whole.state.log_history if key in h]
        b = [h[key] for h in split.state.log_history if key in h]
        assert len(a) == 3
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=1e-5, atol=1e-6)


def test_resume_equals_an_uninterrupted_run(workspace):
    tmp_path, recipe = workspace
    cross = cross_tokenizer_recipe(tmp_path, recipe, "aligned", extra="adam_epsilon: 1.0e-6\n")
    common = dict(max_steps=4, save_strategy="steps", per_device_train_batch_size=4)
    full = _trainer(tmp_path, cross, output_dir=tmp_path / "full", save_steps=100, **common)
    full.train()
    first = _trainer(tmp_path, cross, output_dir=tmp_path / "resumed", save_steps=2, **common)
    first.train()
    resumed = _trainer(tmp_path, cross, output_dir=tmp_path / "resumed", save_steps=2, **common)
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-2"))
    _assert_same(_weights(full), _weights(resumed))

    def logged(trainer):
        return [(h["step"], h["loss"], h["kd_loss"]) for h in trainer.state.log_history if "loss" in h]

    assert [s for s, *_ in logged(resumed)] == [1, 2, 3, 4]
    torch.testing.assert_close(torch.tensor(logged(resumed)), torch.tensor(logged(full)), rtol=1e-5, atol=1e-6)


def test_aligned_with_the_students_own_tokenizer_trains_like_the_direct_path(workspace, caplog):
    """One tokenizer on both sides: every target is a span of one token, and `aligned` reaches the weights and
    losses of `cross_tokenizer: off` on the dense path, with a warning that says so."""
    tmp_path, recipe = workspace
    common = dict(max_steps=2, loss_chunk_size=0, adam_epsilon=1e-6, per_device_train_batch_size=8)
    direct = _trainer(tmp_path, recipe, output_dir=tmp_path / "direct", **common)
    aligned = _trainer(tmp_path, recipe, output_dir=tmp_path / "aligned", cross_tokenizer="aligned", **common)
    assert "teacher and student share one tokenizer" in caplog.text
    direct.train()
    aligned.train()
    _assert_same(_weights(direct), _weights(aligned), atol=1e-6)

    def logged(trainer):
        return [(h["loss"], h["kd_loss"]) for h in trainer.state.log_history if "loss" in h]

    torch.testing.assert_close(torch.tensor(logged(aligned)), torch.tensor(logged(direct)), rtol=1e-6, atol=1e-7)


def test_python_api_needs_teacher_tokens_and_the_teachers_tokenizer(tmp_path):
    digit_tokenizer().save_pretrained(tmp_path / "teacher_tokenizer")
    teacher = tiny_llama(seed=4, vocab=len(DIGIT_WORDS))

    def trainer(**fields):
        args = DistillConfig(
            output_dir=str(tmp_path / "out"), use_cpu=True, max_steps=1, report_to=[], cross_tokenizer="uld", **fields
        )
        return DistillTrainer(
            model=tiny_llama(seed=1),
            teacher_model=teacher,
            args=args,
            train_dataset=variable_length_dataset(),
            data_collator=pad_collator,
            processing_class=word_tokenizer(),
        )

    with pytest.raises(ValueError, match="the teacher was given as a model, not a path.*teacher_tokenizer_name_or"):
        trainer()
    # Batches from a collator that knows no teacher tokens: refused at the first step.
    with pytest.raises(ValueError, match="the teacher reads its own tokens, and the batch carries none"):
        trainer(teacher_tokenizer_name_or_path=str(tmp_path / "teacher_tokenizer")).train()


def test_cache_teacher_and_evaluate_refuse_a_teacher_of_another_tokenizer(workspace, capsys, no_weights):
    tmp_path, recipe = workspace
    cross = cross_tokenizer_recipe(tmp_path, recipe)
    line = error_line(capsys, ["cache-teacher", cross, "--output_dir", str(tmp_path / "cache"), "--top_k", "4"])
    assert "cache-teacher with a teacher of another tokenizer (cross_tokenizer='uld')" in line
    assert not (tmp_path / "cache").exists()
    line = error_line(capsys, ["evaluate", cross])
    assert "(cross_tokenizer='uld'): evaluate runs student and teacher on one tokenizer's prompts" in line


def test_a_teacher_with_nonfinite_outputs_stops_the_run(workspace):
    from hf_distill.teachers.numerics import NonFiniteTeacherError

    tmp_path, recipe = workspace
    trainer = _trainer(tmp_path, cross_tokenizer_recipe(tmp_path, recipe, "aligned"), output_dir=tmp_path / "out")
    with torch.no_grad():
        trainer.teacher.models[0].model.norm.weight[3] = float("nan")
    before = _weights(trainer)
    message = r"^teacher produced NaN or inf \(step 1\): the teacher \(.*teacher_b'\)"
    with pytest.raises(NonFiniteTeacherError, match=message):
        trainer.train()
    _assert_same(_weights(trainer), before, atol=0)
