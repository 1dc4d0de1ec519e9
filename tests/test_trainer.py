"""DistillTrainer on tiny Llama models: exactness under any batch split, teacher handling, metrics, resume."""

import json
import os
import re

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from testing_utils import pad_collator, tiny_llama, variable_length_dataset
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.trainer_utils import get_last_checkpoint

from hf_distill import DistillConfig, DistillTrainer
from hf_distill.losses import cross_entropy_loss, distillation_loss


def make_args(tmp_path, **overrides):
    defaults = dict(
        output_dir=str(tmp_path),
        use_cpu=True,
        per_device_train_batch_size=8,
        max_steps=3,
        learning_rate=1e-3,
        # Adam turns a gradient entry of ~1e-10 (float rounding around a true 0) into a step of lr * sign(g) when
        # eps is 1e-8; 1e-6 keeps such noise-level entries from dominating a weight comparison at 1e-5.
        adam_epsilon=1e-6,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=0,
        data_seed=0,
        temperature=2.0,
    )
    defaults.update(overrides)
    return DistillConfig(**defaults)


def train(tmp_path, teacher=None, **overrides):
    trainer = DistillTrainer(
        model=tiny_llama(seed=1, hidden=32, layers=1),
        teacher_model=teacher if teacher is not None else tiny_llama(seed=2, hidden=48, layers=2),
        args=make_args(tmp_path, **overrides),
        train_dataset=variable_length_dataset(),
        data_collator=pad_collator,
    )
    trainer.train()
    return trainer


def weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def assert_same_weights(a, b, atol=1e-5):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=key)


@pytest.mark.parametrize("loss_chunk_size", [0, 256])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_batch_split_invariance(tmp_path, alpha, loss_chunk_size):
    """8 x 1 and 2 x 4 micro-batches of sequences with different token counts reach the same weights, on the dense
    path (0) and the chunked one."""
    common = dict(alpha=alpha, loss_chunk_size=loss_chunk_size)
    whole = train(tmp_path / "a", per_device_train_batch_size=8, gradient_accumulation_steps=1, **common)
    split = train(tmp_path / "b", per_device_train_batch_size=2, gradient_accumulation_steps=4, **common)
    initial = tiny_llama(seed=1, hidden=32, layers=1).state_dict()
    assert any(not torch.equal(initial[k], v) for k, v in weights(whole).items()), "training changed nothing"
    assert_same_weights(weights(whole), weights(split))
    for key in ("loss", "ce_loss") + (("kd_loss",) if alpha < 1 else ()):
        losses_a = [log[key] for log in whole.state.log_history if key in log]
        losses_b = [log[key] for log in split.state.log_history if key in log]
        assert len(losses_a) == 3
        torch.testing.assert_close(torch.tensor(losses_a), torch.tensor(losses_b), rtol=1e-5, atol=1e-6)


def test_logged_losses_match_independent_computation(tmp_path):
    """Step 1's logged loss, ce_loss and kd_loss equal the formula on the whole batch at the initial weights."""
    student, teacher = tiny_llama(seed=1, hidden=32, layers=1), tiny_llama(seed=2, hidden=48, layers=2)
    trainer = DistillTrainer(
        model=student,
        teacher_model=teacher,
        args=make_args(tmp_path, max_steps=1, per_device_train_batch_size=4, gradient_accumulation_steps=2),
        train_dataset=variable_length_dataset(8),
        data_collator=pad_collator,
    )
    batch = pad_collator(list(variable_length_dataset(8)))  # one step = the whole set, order does not matter
    with torch.no_grad():
        s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    targets = batch["labels"][:, 1:]
    n = (targets != -100).sum()
    ce = cross_entropy_loss(s, targets) / n
    kd = distillation_loss(s, t, targets, temperature=2.0) / n
    trainer.train()
    log = trainer.state.log_history[0]
    assert log["ce_loss"] == pytest.approx(ce.item(), rel=1e-5)
    assert log["kd_loss"] == pytest.approx(kd.item(), rel=1e-5)
    assert log["loss"] == pytest.approx(0.5 * ce.item() + 0.5 * kd.item(), rel=1e-5)


def test_logged_losses_are_averaged_over_the_logging_window(tmp_path):
    """With logging_steps=3, ce_loss and kd_loss are the means of the three steps' values, as loss is, so the logged
    loss stays alpha * ce_loss + (1 - alpha) * kd_loss; the per-step values come from an identical run logging every
    step."""
    alpha = 0.3
    per_step = train(tmp_path / "every", alpha=alpha, logging_steps=1)
    windowed = train(tmp_path / "window", alpha=alpha, logging_steps=3)
    steps = [h for h in per_step.state.log_history if "loss" in h]
    (window,) = [h for h in windowed.state.log_history if "loss" in h]
    assert len(steps) == 3 and window["step"] == 3
    for key in ("loss", "ce_loss", "kd_loss"):
        values = [h[key] for h in steps]
        assert len(set(values)) == 3, f"{key} is the same at every step: a window mean would not tell sum from mean"
        assert window[key] == pytest.approx(sum(values) / 3, rel=1e-5), key
    assert window["loss"] == pytest.approx(alpha * window["ce_loss"] + (1 - alpha) * window["kd_loss"], rel=1e-5)


def test_alpha_one_never_loads_or_calls_teacher(tmp_path):
    class Exploding(torch.nn.Module):
        def forward(self, *args, **kwargs):
            raise AssertionError("the teacher was called")

    trainer = DistillTrainer(
        model=tiny_llama(seed=1),
        args=make_args(tmp_path, alpha=1.0, teacher_model_name_or_path="/does/not/exist"),
        train_dataset=variable_length_dataset(),
        data_collator=pad_collator,
    )
    assert trainer.teacher_model is None
    trainer.train()
    trainer2 = DistillTrainer(
        model=tiny_llama(seed=1),
        teacher_model=Exploding(),
        args=make_args(tmp_path, alpha=1.0),
        train_dataset=variable_length_dataset(),
        data_collator=pad_collator,
    )
    trainer2.train()
    assert "kd_loss" not in trainer2.state.log_history[0]


def test_alpha_zero_trains_on_divergence_alone(tmp_path):
    student, teacher = tiny_llama(seed=1, hidden=32, layers=1), tiny_llama(seed=2, hidden=48, layers=2)
    trainer = DistillTrainer(
        model=student,
        teacher_model=teacher,
        args=make_args(tmp_path, alpha=0.0, max_steps=1),
        train_dataset=variable_length_dataset(8),
        data_collator=pad_collator,
    )
    trainer.train()
    log = trainer.state.log_history[0]
    assert log["loss"] == pytest.approx(log["kd_loss"], rel=1e-6)
    assert log["ce_loss"] > log["kd_loss"]


def test_teacher_is_frozen_and_outside_optimizer_and_checkpoints(tmp_path):
    teacher = tiny_llama(seed=2, hidden=48, layers=2)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer = train(tmp_path, teacher=teacher, save_strategy="steps", save_steps=3)
    assert not teacher.training
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert_same_weights(before, teacher.state_dict(), atol=0)
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimized.isdisjoint(id(p) for p in teacher.parameters())
    checkpoint = get_last_checkpoint(str(tmp_path))
    saved = load_file(os.path.join(checkpoint, "model.safetensors"))
    assert set(saved) == set(trainer.model.state_dict())
    assert saved["model.embed_tokens.weight"].shape[1] == 32  # the student's width, not the teacher's 48


def test_teacher_loaded_from_local_folder(tmp_path):
    tiny_llama(seed=2, hidden=48, layers=2).save_pretrained(tmp_path / "teacher")
    trainer = DistillTrainer(
        model=tiny_llama(seed=1),
        args=make_args(
            tmp_path / "run",
            teacher_model_name_or_path=str(tmp_path / "teacher"),
            teacher_model_init_kwargs={"dtype": "bfloat16"},
        ),
        train_dataset=variable_length_dataset(),
        data_collator=pad_collator,
    )
    assert trainer.teacher_model.dtype == torch.bfloat16
    assert trainer.teacher_model.config.hidden_size == 48
    trainer.train()
    assert "kd_loss" in trainer.state.log_history[0]


def test_missing_teacher_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="needs a teacher"):
        DistillTrainer(model=tiny_llama(seed=1), args=make_args(tmp_path), train_dataset=variable_length_dataset())
    with pytest.raises(ValueError, match="teacher_model_name_or_path='/no/such/teacher'"):
        DistillTrainer(
            model=tiny_llama(seed=1),
            args=make_args(tmp_path, teacher_model_name_or_path="/no/such/teacher"),
            train_dataset=variable_length_dataset(),
        )


def test_vocabulary_padding_is_allowed_and_real_mismatch_refused(tmp_path):
    padded = tiny_llama(seed=2, vocab=128)  # 64 real tokens padded to a multiple of 128
    trainer = DistillTrainer(
        model=tiny_llama(seed=1, vocab=64),
        teacher_model=padded,
        args=make_args(tmp_path, max_steps=1),
        train_dataset=variable_length_dataset(),
        data_collator=pad_collator,
    )
    assert trainer.teacher.kd_vocab == 64
    trainer.train()
    with pytest.raises(ValueError, match="student vocab size 64 and teacher vocab size 200"):
        DistillTrainer(
            model=tiny_llama(seed=1, vocab=64), teacher_model=tiny_llama(seed=2, vocab=200), args=make_args(tmp_path)
        )


def test_tokenizer_larger_than_model_vocabulary_is_refused(tmp_path):
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=_word_tokenizer(100))
    with pytest.raises(ValueError, match="tokenizer has 100 tokens"):
        DistillTrainer(
            model=tiny_llama(seed=1, vocab=64),
            teacher_model=tiny_llama(seed=2, vocab=64),
            args=make_args(tmp_path),
            processing_class=tokenizer,
        )


def _word_tokenizer(size):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    return Tokenizer(WordLevel({f"w{i}": i for i in range(size)}, unk_token="w0"))


def test_evaluation_reports_distillation_metrics(tmp_path):
    """eval_loss, eval_ce_loss, eval_kd_loss and eval_teacher_agreement are token-weighted means over the eval set,
    checked against explicit forward passes of both models over the whole set at once. Batches of 3, 3 and 1
    sequences hold different token counts, so a mean of per-batch means would differ (asserted below)."""
    student = tiny_llama(seed=1)
    # The student with a perturbed LM head: a teacher that agrees with it on some tokens, not all, nor none.
    teacher = tiny_llama(seed=1)
    with torch.no_grad():
        teacher.lm_head.weight.add_(
            0.05 * torch.randn(teacher.lm_head.weight.shape, generator=torch.Generator().manual_seed(5))
        )
    eval_rows = variable_length_dataset(7, seed=4)
    trainer = DistillTrainer(
        model=student,
        teacher_model=teacher,
        args=make_args(tmp_path, per_device_eval_batch_size=3, alpha=0.3),
        eval_dataset=eval_rows,
        data_collator=pad_collator,
    )
    metrics = trainer.evaluate()

    def per_token(rows):
        """CE, forward KL at T = 2 (times T**2), top-1 agreement at each target token of `rows`."""
        batch = pad_collator(list(rows))
        with torch.no_grad():
            s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
            t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        targets = batch["labels"][:, 1:]
        mask = targets != -100
        s, t, targets = s[mask].double(), t[mask].double(), targets[mask]
        ce = torch.nn.functional.cross_entropy(s, targets, reduction="none")
        log_s, log_t = torch.log_softmax(s / 2.0, dim=-1), torch.log_softmax(t / 2.0, dim=-1)
        kd = 4.0 * torch.nn.functional.kl_div(log_s, log_t, log_target=True, reduction="none").sum(-1)
        return ce, kd, (s.argmax(-1) == t.argmax(-1)).double()

    ce, kd, agree = per_token(eval_rows)
    assert 0 < agree.mean() < 1 and (kd > 0).all()
    assert metrics["eval_ce_loss"] == pytest.approx(ce.mean().item(), rel=1e-5)
    assert metrics["eval_kd_loss"] == pytest.approx(kd.mean().item(), rel=1e-5)
    assert metrics["eval_teacher_agreement"] == pytest.approx(agree.mean().item(), rel=1e-6)
    assert metrics["eval_loss"] == pytest.approx(0.3 * ce.mean().item() + 0.7 * kd.mean().item(), rel=1e-5)
    batches = [per_token(eval_rows.select(range(i, min(i + 3, 7)))) for i in (0, 3, 6)]
    assert len({len(b[0]) for b in batches}) == 3, "the eval batches should hold different token counts"
    for term, whole in ((0, ce), (1, kd)):
        # At least 10x the tolerance above: a mean of per-batch means would fail those checks.
        mean_of_means = sum(b[term].mean().item() for b in batches) / 3
        assert mean_of_means != pytest.approx(whole.mean().item(), rel=1e-4)


def test_early_stopping(tmp_path):
    with pytest.raises(ValueError, match="needs an eval_dataset"):
        DistillTrainer(
            model=tiny_llama(seed=1),
            teacher_model=tiny_llama(seed=2),
            args=make_args(tmp_path, early_stop_patience=1, eval_strategy="steps", eval_steps=1),
            train_dataset=variable_length_dataset(),
        )
    # A learning rate of 0 never improves eval_loss: patience 2 stops training after the third evaluation.
    trainer = DistillTrainer(
        model=tiny_llama(seed=1),
        teacher_model=tiny_llama(seed=2),
        args=make_args(
            tmp_path,
            early_stop_patience=2,
            eval_strategy="steps",
            eval_steps=1,
            max_steps=10,
            learning_rate=0.0,
            per_device_train_batch_size=2,
        ),
        train_dataset=variable_length_dataset(),
        eval_dataset=variable_length_dataset(4, seed=9),
        data_collator=pad_collator,
    )
    trainer.train()
    assert trainer.state.global_step == 3


def test_resume_continues_the_same_run(tmp_path):
    common = dict(per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=6, save_strategy="steps")
    full = train(tmp_path / "full", save_steps=100, **common)
    first = train(tmp_path / "resumed", save_steps=3, **common)
    checkpoint = os.path.join(tmp_path / "resumed", "checkpoint-3")
    assert os.path.isdir(checkpoint)
    resumed = DistillTrainer(
        model=tiny_llama(seed=1, hidden=32, layers=1),
        teacher_model=tiny_llama(seed=2, hidden=48, layers=2),
        args=make_args(tmp_path / "resumed", save_steps=3, **common),
        train_dataset=variable_length_dataset(),
        data_collator=pad_collator,
    )
    resumed.train(resume_from_checkpoint=checkpoint)
    assert_same_weights(weights(full), weights(resumed))
    assert_same_weights(weights(full), weights(first))

    def logged(trainer):
        return [(h["step"], h["loss"], h["ce_loss"], h["kd_loss"]) for h in trainer.state.log_history if "loss" in h]

    full_logs, resumed_logs = logged(full), logged(resumed)
    assert [s for s, *_ in resumed_logs] == [1, 2, 3, 4, 5, 6]
    torch.testing.assert_close(torch.tensor(resumed_logs), torch.tensor(full_logs), rtol=1e-5, atol=1e-6)
    state = json.loads((tmp_path / "resumed" / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6


def test_drop_in_positional_arguments(tmp_path):
    """Existing scripts pass Trainer's arguments positionally: (model, args, data_collator, train_dataset, ...)."""
    trainer = DistillTrainer(
        tiny_llama(seed=1),
        make_args(tmp_path, max_steps=1),
        pad_collator,
        variable_length_dataset(),
        teacher_model=tiny_llama(seed=2),
    )
    trainer.train()
    assert trainer.state.global_step == 1


def test_args_must_be_distill_config(tmp_path):
    from transformers import TrainingArguments

    with pytest.raises(TypeError, match="DistillConfig"):
        DistillTrainer(model=tiny_llama(seed=1), args=TrainingArguments(output_dir=str(tmp_path)))


def test_step_without_any_target_token_is_finite(tmp_path):
    rows = [dict(r, labels=[-100] * len(r["labels"])) for r in variable_length_dataset(8)]
    trainer = DistillTrainer(
        model=tiny_llama(seed=1),
        teacher_model=tiny_llama(seed=2),
        args=make_args(tmp_path, max_steps=2, per_device_train_batch_size=2, gradient_accumulation_steps=2),
        train_dataset=Dataset.from_list(rows),
        data_collator=pad_collator,
    )
    before = weights(trainer)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses == [0.0, 0.0]
    assert_same_weights(before, weights(trainer), atol=0)


@pytest.mark.parametrize("loss_type", ["forward_kl", "jsd", "tvd"])
def test_chunked_path_trains_to_the_dense_weights(tmp_path, loss_type):
    dense = train(tmp_path / "dense", loss_type=loss_type, loss_chunk_size=0, per_device_train_batch_size=4)
    chunked = train(tmp_path / "chunked", loss_type=loss_type, loss_chunk_size=5, per_device_train_batch_size=4)
    assert_same_weights(weights(dense), weights(chunked))
    for key in ("loss", "ce_loss", "kd_loss"):
        a = [h[key] for h in dense.state.log_history if key in h]
        b = [h[key] for h in chunked.state.log_history if key in h]
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=1e-5, atol=1e-6)


def test_chunked_path_trains_to_the_dense_weights_with_tied_embeddings(tmp_path):
    """A student whose LM head is its input embedding, as in the real recipes' students: the chunked path's head
    gradient and the embedding's own gradient land on one tensor, as on the dense path."""

    def run(output_dir, loss_chunk_size):
        config = tiny_llama(seed=1, hidden=32, layers=1).config
        config.tie_word_embeddings = True
        torch.manual_seed(1)
        student = LlamaForCausalLM(config)
        assert student.lm_head.weight is student.model.embed_tokens.weight
        trainer = DistillTrainer(
            model=student,
            teacher_model=tiny_llama(seed=2, hidden=48, layers=2),
            args=make_args(output_dir, loss_chunk_size=loss_chunk_size, per_device_train_batch_size=4),
            train_dataset=variable_length_dataset(),
            data_collator=pad_collator,
        )
        before = student.lm_head.weight.detach().clone()
        trainer.train()
        assert trainer.model.lm_head.weight is trainer.model.model.embed_tokens.weight
        assert not torch.equal(before, trainer.model.lm_head.weight), "training left the tied head unchanged"
        return trainer

    dense, chunked = run(tmp_path / "dense", 0), run(tmp_path / "chunked", 5)
    assert_same_weights(weights(dense), weights(chunked))
    for key in ("loss", "ce_loss", "kd_loss"):
        a = [h[key] for h in dense.state.log_history if key in h]
        b = [h[key] for h in chunked.state.log_history if key in h]
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=1e-5, atol=1e-6)


def test_chunked_path_never_projects_all_positions(tmp_path):
    student, teacher = tiny_llama(seed=1, hidden=32, layers=1), tiny_llama(seed=2, hidden=48, layers=2)
    trainer = DistillTrainer(
        model=student,
        teacher_model=teacher,
        args=make_args(tmp_path, max_steps=2, loss_chunk_size=8),
        train_dataset=variable_length_dataset(),
        data_collator=pad_collator,
    )
    # Hooked after the trainer is built: building it probes each head against the model's own (projected) logits.
    projected = []
    for model in (student, teacher):
        model.lm_head.register_forward_hook(lambda m, args, out: projected.append(tuple(args[0].shape)))
    trainer.train()
    assert len(projected) == 4 and all(shape[1] == 0 for shape in projected), projected


def test_early_stopping_with_positional_arguments(tmp_path):
    """Trainer's positional order (data_collator, train_dataset, eval_dataset, ..., callbacks) finds the eval set, and
    a callback passed positionally runs beside the early stopping."""
    from transformers import EarlyStoppingCallback, TrainerCallback

    class CountEvaluations(TrainerCallback):
        def __init__(self):
            self.calls = 0

        def on_evaluate(self, args, state, control, **kwargs):
            self.calls += 1

    counter = CountEvaluations()
    args = make_args(
        tmp_path,
        early_stop_patience=2,
        eval_strategy="steps",
        eval_steps=1,
        max_steps=10,
        learning_rate=0.0,  # eval_loss never improves: patience 2 stops after the third evaluation
        per_device_train_batch_size=2,
    )
    # model, args, data_collator, train_dataset, eval_dataset, processing_class, model_init, compute_loss_func,
    # compute_metrics, callbacks
    positional = [pad_collator, variable_length_dataset(), variable_length_dataset(4, seed=9), None, None, None, None]
    trainer = DistillTrainer(tiny_llama(seed=1), args, *positional, [counter], teacher_model=tiny_llama(seed=2))
    assert sum(isinstance(c, EarlyStoppingCallback) for c in trainer.callback_handler.callbacks) == 1
    trainer.train()
    assert trainer.state.global_step == 3
    assert counter.calls == 3
    with pytest.raises(ValueError, match="early_stop_patience=2 needs an eval_dataset"):
        DistillTrainer(tiny_llama(seed=1), args, pad_collator, variable_length_dataset(), None)


def test_compute_loss_func_is_refused(tmp_path):
    """A drop-in script's `compute_loss_func` would be silently unused: the trainer says so instead."""
    with pytest.raises(ValueError, match="compute_loss_func is not used by DistillTrainer"):
        DistillTrainer(
            model=tiny_llama(seed=1),
            teacher_model=tiny_llama(seed=2),
            args=make_args(tmp_path),
            train_dataset=variable_length_dataset(),
            compute_loss_func=lambda outputs, labels, num_items_in_batch: outputs.loss,
        )


def test_each_model_is_unwrapped_once_however_many_steps(tmp_path, monkeypatch):
    # Accelerate's unwrap_model looks up installed packages on every call (about 1 ms with DeepSpeed installed);
    # the trainer keeps each wrapper's inner model instead of asking again at every micro-batch.
    from accelerate import Accelerator

    calls = []
    unwrap = Accelerator.unwrap_model

    def counting(self, model, *args, **kwargs):
        calls.append(model)
        return unwrap(self, model, *args, **kwargs)

    monkeypatch.setattr(Accelerator, "unwrap_model", counting)
    train(tmp_path / "few", max_steps=2)
    few = len(calls)
    calls.clear()
    trainer = train(tmp_path / "many", max_steps=6, gradient_accumulation_steps=2, per_device_train_batch_size=4)
    assert trainer.uses_fused_loss("train")
    assert len(calls) == few


@pytest.mark.parametrize(
    ("overrides", "setting"),
    [
        ({"teacher_cache_dir": "cache"}, "teacher_cache_dir"),
        ({"use_teacher_server": True, "teacher_model_server_url": "http://127.0.0.1:9"}, "use_teacher_server=True"),
    ],
)
def test_a_teacher_model_that_would_never_run_is_refused(tmp_path, overrides, setting):
    """Before: the model passed was silently ignored, the cache (or the server) being the teacher."""
    args = make_args(tmp_path, **overrides)
    prefix = (
        rf"^teacher model that would be ignored \(DistillTrainer\(teacher_model=\.\.\.\), {re.escape(setting)}\): "
    )
    with pytest.raises(ValueError, match=prefix):
        DistillTrainer(model=tiny_llama(seed=1), args=args, teacher_model=tiny_llama(seed=2))
