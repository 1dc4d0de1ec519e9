"""Which engine gets which teacher: the pure decisions, unit-tested. The engines themselves (the ZeRO-3 inference
engine, the FSDP2-sharded teacher, ZeRO-3's dense path) run for real in tests/distributed/test_engines.py."""

import types

import pytest
import torch
from accelerate.utils import DistributedType
from testing_utils import VOCAB, tiny_llama

from hf_distill.models.causal_lm import check_vocabularies, output_width
from hf_distill.models.hidden_states import lm_head
from hf_distill.teachers.placement import deepspeed_inference_config, is_deepspeed_zero3, place_teacher

ZERO3 = {
    "train_micro_batch_size_per_gpu": 4,
    "bf16": {"enabled": True},
    "optimizer": {"type": "AdamW"},
    "scheduler": {"type": "WarmupLR"},
    "zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}, "offload_param": {"device": "cpu"}},
}
SIZED = ("reduce_bucket_size", "stage3_param_persistence_threshold", "stage3_prefetch_bucket_size")


def test_zero3_teacher_is_sharded_without_training_blocks():
    config = deepspeed_inference_config(ZERO3, hidden_size=64)
    assert config["zero_optimization"]["stage"] == 3
    assert "optimizer" not in config and "scheduler" not in config
    assert "offload_optimizer" not in config["zero_optimization"]
    assert config["zero_optimization"]["offload_param"] == {"device": "cpu"}
    # DeepSpeed reads the ZeRO settings inside `zero_optimization` only; a dotted top-level key would be ignored.
    assert {k: config["zero_optimization"][k] for k in SIZED} == {
        "reduce_bucket_size": 64 * 64,
        "stage3_param_persistence_threshold": 640,
        "stage3_prefetch_bucket_size": int(0.9 * 64 * 64),
    }
    assert not any("." in key for key in config)
    assert ZERO3["optimizer"] == {"type": "AdamW"}, "the training config must not be modified"


def test_zero2_teacher_is_a_full_copy():
    config = deepspeed_inference_config({"zero_optimization": {"stage": 2}}, hidden_size=64)
    assert config["zero_optimization"] == {"stage": 0}


def test_size_dependent_auto_values_are_filled_or_dropped():
    """The "auto" bucket sizes of Hugging Face's ZeRO-2/3 example configs: Trainer fills them from the student only
    when it prepares it, after the teacher is placed, and DeepSpeed cannot parse "auto"."""
    zero = {
        "stage": 3,
        "overlap_comm": True,
        "reduce_bucket_size": "auto",
        "stage3_prefetch_bucket_size": "auto",
        "stage3_param_persistence_threshold": "auto",
        "stage3_gather_16bit_weights_on_model_save": True,
    }
    config = deepspeed_inference_config({"zero_optimization": zero}, hidden_size=64)
    assert config["zero_optimization"]["reduce_bucket_size"] == 64 * 64
    config = deepspeed_inference_config({"zero_optimization": zero}, hidden_size=None)
    assert config["zero_optimization"] == {
        "stage": 3,
        "overlap_comm": True,
        "stage3_gather_16bit_weights_on_model_save": True,
    }
    zero2 = {"stage": 2, "allgather_bucket_size": "auto", "reduce_bucket_size": "auto", "contiguous_gradients": True}
    config = deepspeed_inference_config({"zero_optimization": zero2}, hidden_size=64)
    assert config["zero_optimization"] == {"stage": 0, "contiguous_gradients": True}


def fake_accelerator(distributed_type, **extra):
    return types.SimpleNamespace(
        distributed_type=distributed_type, device=torch.device("cpu"), is_fsdp2=False, **extra
    )


def test_ddp_and_single_device_teacher_is_a_frozen_copy_on_the_device():
    teacher = tiny_llama(seed=2).train()
    placed = place_teacher(teacher, fake_accelerator(DistributedType.MULTI_GPU))
    assert placed is teacher and not placed.training
    assert not any(p.requires_grad for p in placed.parameters())


def zero3_accelerator(stage):
    plugin = types.SimpleNamespace(zero_stage=stage)
    return fake_accelerator(DistributedType.DEEPSPEED, state=types.SimpleNamespace(deepspeed_plugin=plugin))


def test_only_deepspeed_stage_3_counts_as_zero3():
    assert is_deepspeed_zero3(zero3_accelerator(3))
    assert not is_deepspeed_zero3(zero3_accelerator(2))
    assert not is_deepspeed_zero3(fake_accelerator(DistributedType.MULTI_GPU))
    assert not is_deepspeed_zero3(fake_accelerator(DistributedType.FSDP))


def zero3_partitioned_head(model):
    """The LM head as ZeRO-3 leaves it outside forward: an empty partition, the full shape in `ds_shape`."""
    full_shape = model.lm_head.weight.shape
    model.lm_head.weight = torch.nn.Parameter(torch.empty(0))
    model.lm_head.weight.ds_shape = full_shape
    return model


def test_zero3_partitioned_head_keeps_its_vocabulary_width():
    student = zero3_partitioned_head(tiny_llama(seed=1))
    assert output_width(student) == VOCAB
    assert check_vocabularies(student, tiny_llama(seed=2), tokenizer_size=VOCAB) == VOCAB


def test_chunked_loss_refuses_a_zero3_partitioned_head():
    with pytest.raises(ValueError, match=r"ZeRO-3 partition of shape \(0,\).*set loss_chunk_size=0"):
        lm_head(zero3_partitioned_head(tiny_llama(seed=1)))
