"""Where the teacher lives under each engine: a copy per device (DDP), sharded (FSDP2), a ZeRO-3 inference
engine (DeepSpeed). The teacher never joins the optimizer, never gets a gradient and is never checkpointed."""

import copy
from typing import Any

from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn


def deepspeed_inference_config(train_config: dict[str, Any], hidden_size: int | None) -> dict[str, Any]:
    """DeepSpeed config for a frozen teacher, derived from the training config (TRL's `prepare_deepspeed` recipe).

    ZeRO-3 shards the teacher like the student; any other stage keeps a full copy per device (stage 0). Training-only
    blocks go: without an optimizer DeepSpeed would otherwise build CPUAdam or a scheduler with nothing to drive.
    """
    config = copy.deepcopy(train_config)
    zero = config.setdefault("zero_optimization", {})
    stage = zero.get("stage", 0)
    if stage == 3 and hidden_size is not None:
        # DeepSpeed reads these inside the `zero_optimization` block only; a dotted top-level key is ignored.
        zero.update(
            {
                "reduce_bucket_size": hidden_size * hidden_size,
                "stage3_param_persistence_threshold": 10 * hidden_size,
                "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
            }
        )
    # Trainer fills the size-dependent "auto" values from the student only when it prepares it, after the teacher
    # is placed (`trainer_config_finalize`); DeepSpeed cannot parse those left, so its defaults apply instead.
    for key in [key for key, value in zero.items() if value == "auto"]:
        del zero[key]
    config.pop("optimizer", None)
    config.pop("scheduler", None)
    zero.pop("offload_optimizer", None)
    if stage != 3:
        zero["stage"] = 0
    return config


def is_deepspeed_zero3(accelerator: Accelerator) -> bool:
    """Whether the engine is DeepSpeed ZeRO-3, whose parameters outside their module's forward are empty partitions."""
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return False
    return accelerator.state.deepspeed_plugin.zero_stage == 3


def _hidden_size(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    if config is None:
        return None
    sizes = getattr(config, "hidden_sizes", None)
    return max(sizes) if sizes else getattr(config, "hidden_size", None)


def place_teacher(teacher: nn.Module, accelerator: Accelerator) -> nn.Module:
    """Freeze the teacher and put it where the student's engine needs it. Not registered with the Accelerator,
    so it stays out of the optimizer and of every checkpoint."""
    teacher.eval()
    teacher.requires_grad_(False)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        import deepspeed

        config = deepspeed_inference_config(accelerator.state.deepspeed_plugin.deepspeed_config, _hidden_size(teacher))
        engine, *_ = deepspeed.initialize(model=teacher, config=config)
        engine.eval()
        return engine
    if accelerator.distributed_type == DistributedType.FSDP and accelerator.is_fsdp2:
        from accelerate.utils.fsdp_utils import fsdp2_prepare_model

        # The same auto-wrap, mixed precision and mesh as the student, so a teacher larger than one device fits.
        return fsdp2_prepare_model(accelerator, teacher)
    return teacher.to(accelerator.device)
