"""Faults: NaN/inf steps are skipped and a run that keeps producing them stops with the step and example ids."""

import logging
import types

import pytest
import torch
from accelerate.utils import DistributedType
from test_trainer import assert_same_weights, make_args, weights
from testing_utils import tiny_llama, variable_length_dataset, word_tokenizer
from transformers import TrainerCallback, TrainerState

from hf_distill import DistillTrainer
from hf_distill.data.datasets import DistillDataCollator
from hf_distill.run.nonfinite_guard import NonFiniteGuard, NonFiniteLossError, _all_finite


class WeightRecorder(TrainerCallback):
    def __init__(self):
        self.after_step = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.after_step[state.global_step] = {k: v.detach().clone() for k, v in model.state_dict().items()}


def nan_trainer(tmp_path, bad_steps, **kw):
    dataset = variable_length_dataset().map(lambda _, i: {"id": f"ex-{i}"}, with_indices=True)
    trainer = DistillTrainer(
        model=tiny_llama(seed=1),
        teacher_model=tiny_llama(seed=2),
        args=make_args(tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=4, **kw),
        train_dataset=dataset,
        data_collator=DistillDataCollator(word_tokenizer()),
    )

    def poison(module, args, output):
        if module.training and trainer.state.global_step + 1 in bad_steps:
            output.last_hidden_state = output.last_hidden_state * float("nan")
        return output

    # On the student's decoder, so the NaN reaches the loss on the dense and the chunked path alike.
    trainer.model.get_decoder().register_forward_hook(poison)
    return trainer


@pytest.mark.parametrize("loss_chunk_size", [0, 1024])
def test_nan_step_is_skipped_and_training_goes_on(tmp_path, loss_chunk_size):
    trainer = nan_trainer(tmp_path, bad_steps={2}, loss_chunk_size=loss_chunk_size)
    recorder = WeightRecorder()
    trainer.add_callback(recorder)
    trainer.train()
    assert trainer.state.global_step == 4
    assert_same_weights(recorder.after_step[1], recorder.after_step[2], atol=0)
    assert not torch.equal(recorder.after_step[2]["lm_head.weight"], recorder.after_step[3]["lm_head.weight"])
    assert all(torch.isfinite(v).all() for v in weights(trainer).values())


def test_consecutive_nan_steps_stop_with_step_and_ids(tmp_path):
    trainer = nan_trainer(tmp_path, bad_steps={2, 3, 4}, max_nonfinite_steps=1)
    with pytest.raises(NonFiniteLossError, match=r"^NaN or inf gradients \(step 3\): 2 consecutive steps") as info:
        trainer.train()
    ids = str(info.value).split("examples of step 3: ")[1].split(";")[0].split(", ")
    assert len(ids) == 4 and all(i.startswith("ex-") for i in ids)


def test_max_nonfinite_steps_zero_stops_at_the_first(tmp_path):
    trainer = nan_trainer(tmp_path, bad_steps={1}, max_nonfinite_steps=0)
    with pytest.raises(NonFiniteLossError, match="step 1"):
        trainer.train()


def guard_on(distributed_type, max_steps=0):
    """A NonFiniteGuard on a fake trainer whose model holds a NaN gradient."""
    model = tiny_llama(seed=1)
    for p in model.parameters():
        p.grad = torch.full_like(p, float("nan"))
    accelerator = types.SimpleNamespace(
        distributed_type=distributed_type, is_main_process=True, num_processes=1, device=torch.device("cpu")
    )
    trainer = types.SimpleNamespace(accelerator=accelerator, model=model, step_example_ids=lambda: ["ex-0"])
    return NonFiniteGuard(trainer, max_steps), model


def test_guard_says_it_is_not_enforced_under_deepspeed(caplog):
    # DeepSpeed steps inside backward and keeps the gradients itself: the guard must not pretend to skip anything.
    with caplog.at_level(logging.WARNING, logger="hf_distill.run.nonfinite_guard"):
        guard, model = guard_on(DistributedType.DEEPSPEED)
    assert "max_nonfinite_steps=0 is not enforced under DeepSpeed" in caplog.text
    guard.on_pre_optimizer_step(None, TrainerState(), None)
    assert all(p.grad is not None for p in model.parameters())


def test_guard_acts_without_deepspeed(caplog):
    with caplog.at_level(logging.WARNING, logger="hf_distill.run.nonfinite_guard"):
        guard, model = guard_on(DistributedType.NO)
    assert "not enforced" not in caplog.text
    with pytest.raises(NonFiniteLossError, match=r"^NaN or inf gradients \(step 1\): .*examples of step 1: ex-0;"):
        guard.on_pre_optimizer_step(None, TrainerState(), None)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "bad, finite",
    [
        ({}, True),
        ({(0, 0): 3e30, (1, 1): -3e30}, True),  # large gradients are still finite
        ({(2, 3): float("nan")}, False),
        ({(2, 3): float("inf")}, False),
        ({(2, 3): float("-inf")}, False),
        ({(2, 3): float("inf"), (4, 5): float("-inf")}, False),  # they would cancel in a sum to NaN, still caught
    ],
)
def test_a_single_nonfinite_gradient_value_is_found(bad, finite, dtype):
    model = tiny_llama(seed=1).to(dtype)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    model.model.embed_tokens.weight.grad = None  # parameters without a gradient are skipped
    for (row, col), value in bad.items():
        model.lm_head.weight.grad[row, col] = value
    assert _all_finite(model).item() is finite
