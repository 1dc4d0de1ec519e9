"""`TrainingArguments` fields that change the loss, the batch or the models, each applied or refused (the table in
docs/trainer_arguments.md)."""

import pytest
import torch
from test_dropin import lora_student, make_args, trainable_weights
from testing_utils import pad_collator, tiny_llama, variable_length_dataset

from hf_distill import DistillTrainer


def build(tmp_path, student=None, teacher=None, **overrides):
    return DistillTrainer(
        model=student if student is not None else tiny_llama(seed=1),
        teacher_model=teacher if teacher is not None else tiny_llama(seed=2, hidden=48),
        args=make_args(tmp_path, **overrides),
        train_dataset=variable_length_dataset(),
        eval_dataset=variable_length_dataset(n=6),
        data_collator=pad_collator,
    )


def _record_embeddings(model):
    """(input ids, output) of every call of the model's input embeddings."""
    calls = []
    embeddings = model.get_input_embeddings()
    embeddings.register_forward_hook(lambda module, args, output: calls.append((args[0], output.detach().clone())))
    return calls


@pytest.mark.parametrize("chunk", [0, None])
def test_neftune_noises_the_students_embeddings_and_not_the_teachers(tmp_path, chunk):
    """NEFTune's hook (Trainer's `neftune_noise_alpha`) goes on the student's input embeddings only: in training the
    student sees noisy embeddings, the teacher its exact ones."""

    def run(name, alpha):
        student, teacher = tiny_llama(seed=1), tiny_llama(seed=2, hidden=48)
        calls = _record_embeddings(teacher)
        trainer = build(tmp_path / name, student, teacher, neftune_noise_alpha=alpha, loss_chunk_size=chunk)
        # Registered after Trainer's own hook (added when training starts), this one sees the noisy output.
        seen = []
        trainer.add_callback(_HookOnTrainBegin(student, seen))
        calls.clear()  # the build-time probe
        trainer.train()
        return trainer, calls, seen

    plain, _, plain_seen = run("plain", None)
    noisy, teacher_calls, student_seen = run("noisy", 5.0)
    teacher_table = noisy.teacher_model.get_input_embeddings().weight
    assert teacher_calls and all(torch.equal(out, teacher_table[ids]) for ids, out in teacher_calls)
    student_table = tiny_llama(seed=1).get_input_embeddings().weight
    ids, out = student_seen[0]
    assert not torch.allclose(out, student_table[ids]), "the student's first embeddings are not noisy"
    ids, out = plain_seen[0]
    torch.testing.assert_close(out, student_table[ids])
    assert any(
        not torch.equal(a, b) for a, b in zip(trainable_weights(plain).values(), trainable_weights(noisy).values())
    )


class _HookOnTrainBegin:
    """A callback that records the student's input-embedding outputs from the start of training."""

    def __init__(self, model, seen):
        self.model, self.seen = model, seen

    def __getattr__(self, name):
        return lambda *args, **kwargs: None

    def on_train_begin(self, *args, **kwargs):
        self.model.get_input_embeddings().register_forward_hook(
            lambda module, a, output: self.seen.append((a[0], output.detach().clone())) if module.training else None
        )


def _counted(forward, calls, role):
    def counted(*args, **kwargs):
        calls[role] += 1
        return forward(*args, **kwargs)

    return counted


@pytest.mark.parametrize("student", ["full", "lora"])
def test_gradient_checkpointing_recomputes_the_student_and_reaches_the_same_weights(tmp_path, student):
    """Each decoder layer of the student runs twice per micro-batch (forward, then recomputed in backward), the
    teacher's once, and the weights are those without checkpointing (chunked loss; full and LoRA students)."""

    def run(name, checkpointing):
        model = tiny_llama(seed=1) if student == "full" else lora_student("decoder")
        teacher = tiny_llama(seed=2, hidden=48)
        calls = {"student": 0, "teacher": 0}
        for role, m in (("student", model), ("teacher", teacher)):
            # The forward of a module inside the first decoder layer, which the recomputation in backward runs again
            # (module hooks do not fire there).
            mlp = (m.get_base_model() if hasattr(m, "get_base_model") else m).model.layers[0].mlp
            mlp.forward = _counted(mlp.forward, calls, role)
        trainer = build(tmp_path / name, model, teacher, gradient_checkpointing=checkpointing, max_steps=1)
        calls.update(student=0, teacher=0)  # the build-time probe
        trainer.train()
        assert trainer.fused_loss
        return calls, trainable_weights(trainer)

    (plain_calls, plain), (checkpointed_calls, checkpointed) = run("plain", False), run("checkpointed", True)
    micro_batches = plain_calls["teacher"]
    assert plain_calls == {"student": micro_batches, "teacher": micro_batches}
    assert checkpointed_calls == {"student": 2 * micro_batches, "teacher": micro_batches}
    for key in plain:
        torch.testing.assert_close(plain[key], checkpointed[key], rtol=0, atol=1e-6, msg=key)


@pytest.mark.parametrize("mode", ["all", "non_padding", "no"])
def test_include_num_input_tokens_seen_counts_every_micro_batch(tmp_path, mode):
    """3 steps of 2 micro-batches of 4 collate the 24-example set once: Trainer counts every micro-batch's tokens
    (padded, or not), which DistillTrainer's collection of the step's micro-batches does not hide."""
    batches = []

    def collator(features):
        batches.append(pad_collator(features))
        return batches[-1]

    trainer = DistillTrainer(
        model=tiny_llama(seed=1),
        teacher_model=tiny_llama(seed=2, hidden=48),
        args=make_args(tmp_path, include_num_input_tokens_seen=mode, gradient_accumulation_steps=2),
        train_dataset=variable_length_dataset(),
        data_collator=collator,
    )
    trainer.train()
    assert len(batches) == 6 and sum(len(b["input_ids"]) for b in batches) == 24
    expected = {
        "all": sum(b["input_ids"].numel() for b in batches),
        "non_padding": sum(len(row["input_ids"]) for row in variable_length_dataset()),
        "no": 0,
    }[mode]
    assert trainer.state.num_input_tokens_seen == expected
    logged = [h["num_input_tokens_seen"] for h in trainer.state.log_history if "num_input_tokens_seen" in h]
    assert logged[-1:] == ([] if mode == "no" else [expected])


def test_prediction_loss_only_and_eval_accumulation_steps(tmp_path):
    """`prediction_loss_only` makes predict() return no logits, as for Trainer, with the same metrics;
    `eval_accumulation_steps` moves the logits to the CPU every step without changing them or the metrics."""
    data = variable_length_dataset(n=6)
    full = build(tmp_path / "a", per_device_eval_batch_size=2).predict(data)
    loss_only = build(tmp_path / "b", per_device_eval_batch_size=2, prediction_loss_only=True).predict(data)
    accumulated = build(tmp_path / "c", per_device_eval_batch_size=2, eval_accumulation_steps=1).predict(data)
    assert full.predictions is not None and loss_only.predictions is None and loss_only.label_ids is None
    assert (accumulated.predictions == full.predictions).all()
    for output in (loss_only, accumulated):
        for key in ("test_loss", "test_ce_loss", "test_kd_loss", "test_teacher_agreement"):
            assert output.metrics[key] == pytest.approx(full.metrics[key], rel=1e-6), key


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"use_liger_kernel": True},
            "unsupported Trainer option (use_liger_kernel=True): Liger patches the student's forward",
        ),
        (
            {"enable_jit_checkpoint": True},
            "unsupported Trainer option (enable_jit_checkpoint=True): DistillTrainer handles SIGTERM itself",
        ),
        (
            "cp_size",
            "unsupported Trainer option (parallelism_config.cp_size=2): tensor, context and sequence parallelism",
        ),
        (
            "tp_size",
            "unsupported Trainer option (parallelism_config.tp_size=2): tensor, context and sequence parallelism",
        ),
    ],
)
def test_unsupported_arguments_are_one_line_before_compute(tmp_path, overrides, message):
    if isinstance(overrides, str):
        from accelerate.parallelism_config import ParallelismConfig

        overrides = {"parallelism_config": ParallelismConfig(**{overrides: 2})}
    student = tiny_llama(seed=1)
    forwards = []
    student.register_forward_pre_hook(lambda *a: forwards.append(1))
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")) as raised:
        build(tmp_path, student, **overrides)
    assert "\n" not in str(raised.value) and forwards == []


@pytest.mark.slow
def test_torch_compile_trains_the_compiled_student_to_the_same_weights(tmp_path):
    """`torch_compile` wraps the student (Trainer's), and the chunked loss runs through the compiled module to the
    weights of the uncompiled run (54 s and 87 s in two runs on 2 shared CPU cores: compilation)."""

    def run(name, compile_):
        trainer = build(tmp_path / name, torch_compile=compile_, max_steps=2)
        trainer.train()
        return trainer, trainable_weights(trainer)

    (_, a), (compiled, b) = run("plain", False), run("compiled", True)
    assert type(compiled.model_wrapped).__name__ == "OptimizedModule" and compiled.fused_loss
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5, msg=key)


def test_bf16_full_eval_casts_the_student_not_the_teacher(tmp_path):
    """`bf16_full_eval` evaluates the student in bfloat16, as for Trainer; the teacher keeps its float32 weights, and
    the metrics stay those of float32 to bfloat16's precision."""
    dtypes = []

    def record(trainer):
        trainer.model.register_forward_pre_hook(
            lambda model, args: dtypes.append((model.dtype, trainer.teacher_model.dtype))
        )
        return trainer

    full = build(tmp_path / "a", per_device_eval_batch_size=3).evaluate()
    half = record(build(tmp_path / "b", per_device_eval_batch_size=3, bf16_full_eval=True)).evaluate()
    assert dtypes and set(dtypes) == {(torch.bfloat16, torch.float32)}
    for key in ("eval_loss", "eval_ce_loss", "eval_kd_loss"):
        assert half[key] == pytest.approx(full[key], rel=3e-2) and half[key] != full[key], key
