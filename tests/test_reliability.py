"""Faults: NaN/inf steps are skipped and a run that keeps producing them stops with the step and example ids."""

import pytest
import torch
from conftest import tiny_llama, variable_length_dataset, word_tokenizer
from test_trainer import assert_same_weights, make_args, weights
from transformers import TrainerCallback

from hf_distill import DistillTrainer
from hf_distill.data import DistillDataCollator
from hf_distill.nonfinite_guard import NonFiniteLossError


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
    with pytest.raises(NonFiniteLossError, match=r"step 3: NaN or inf gradients for 2 consecutive steps") as info:
        trainer.train()
    ids = str(info.value).split("examples of step 3: ")[1].split(", ")
    assert len(ids) == 4 and all(i.startswith("ex-") for i in ids)


def test_max_nonfinite_steps_zero_stops_at_the_first(tmp_path):
    trainer = nan_trainer(tmp_path, bad_steps={1}, max_nonfinite_steps=0)
    with pytest.raises(NonFiniteLossError, match="step 1"):
        trainer.train()
