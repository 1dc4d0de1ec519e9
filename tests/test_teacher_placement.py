"""Which engine gets which teacher: the decisions that a GPU user would otherwise be the first to run."""

import sys
import types

import torch
from accelerate.utils import DistributedType
from conftest import tiny_llama

from hf_distill.teacher_placement import deepspeed_inference_config, place_teacher

ZERO3 = {
    "train_micro_batch_size_per_gpu": 4,
    "bf16": {"enabled": True},
    "optimizer": {"type": "AdamW"},
    "scheduler": {"type": "WarmupLR"},
    "zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}, "offload_param": {"device": "cpu"}},
}


def test_zero3_teacher_is_sharded_without_training_blocks():
    config = deepspeed_inference_config(ZERO3, hidden_size=64)
    assert config["zero_optimization"]["stage"] == 3
    assert "optimizer" not in config and "scheduler" not in config
    assert "offload_optimizer" not in config["zero_optimization"]
    assert config["zero_optimization"]["offload_param"] == {"device": "cpu"}
    assert config["zero_optimization.stage3_param_persistence_threshold"] == 640
    assert ZERO3["optimizer"] == {"type": "AdamW"}, "the training config must not be modified"


def test_zero2_teacher_is_a_full_copy():
    config = deepspeed_inference_config({"zero_optimization": {"stage": 2}}, hidden_size=64)
    assert config["zero_optimization"]["stage"] == 0


def fake_accelerator(distributed_type, **extra):
    return types.SimpleNamespace(
        distributed_type=distributed_type, device=torch.device("cpu"), is_fsdp2=False, **extra
    )


def test_deepspeed_teacher_becomes_an_inference_engine(monkeypatch):
    calls = []

    class Engine(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

    def initialize(model, config):
        calls.append(config)
        return Engine(model), None, None, None

    monkeypatch.setitem(sys.modules, "deepspeed", types.SimpleNamespace(initialize=initialize))
    plugin = types.SimpleNamespace(deepspeed_config=ZERO3)
    accelerator = fake_accelerator(DistributedType.DEEPSPEED, state=types.SimpleNamespace(deepspeed_plugin=plugin))
    teacher = tiny_llama(seed=2)
    engine = place_teacher(teacher, accelerator)
    assert isinstance(engine, Engine) and engine.module is teacher
    assert not engine.training and not any(p.requires_grad for p in teacher.parameters())
    assert calls[0]["zero_optimization"]["stage"] == 3 and "optimizer" not in calls[0]


def test_ddp_and_single_device_teacher_is_a_frozen_copy_on_the_device():
    teacher = tiny_llama(seed=2).train()
    placed = place_teacher(teacher, fake_accelerator(DistributedType.MULTI_GPU))
    assert placed is teacher and not placed.training
    assert not any(p.requires_grad for p in placed.parameters())
