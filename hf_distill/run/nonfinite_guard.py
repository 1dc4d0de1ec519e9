"""Skipping optimizer steps whose gradients hold NaN or inf, and stopping a run that keeps producing them."""

import logging

import torch
from accelerate.utils import DistributedType
from torch.distributed.tensor import DTensor
from transformers import TrainerCallback

from ..user_errors import UserError

logger = logging.getLogger(__name__)


class NonFiniteLossError(UserError, RuntimeError):
    """Training produced NaN or inf gradients for more consecutive steps than `max_nonfinite_steps` allows."""


def _all_finite(model: torch.nn.Module) -> torch.Tensor:
    """Whether every gradient (this process's shard of it) is finite. A sum is NaN or +-inf as soon as one term is,
    and reads each gradient once without writing a mask of its size: `isfinite().all()` per gradient cost 35 ms per
    step for a 19.5M-parameter student on one CPU thread, the sums 2 ms. Finite gradients whose float32 sum overflows
    (values near 1e38) count as not finite."""
    sums = [
        (g.to_local() if isinstance(g, DTensor) else g).sum(dtype=torch.float32)
        for g in (p.grad for p in model.parameters())
        if g is not None
    ]
    return torch.stack(sums).sum().isfinite() if sums else torch.tensor(True)


class NonFiniteGuard(TrainerCallback):
    """Before each optimizer step, drops the gradients if any process has a NaN or inf in them, so the step changes
    no weight; after `max_steps` consecutive such steps, raises `NonFiniteLossError` naming the step and the ids of
    its examples.

    The decision is reduced over processes, so every rank skips (or raises) together and none waits on the others.

    Not under DeepSpeed, which it says once when built: the engine owns the gradients (`p.grad` stays None) and
    takes the optimizer step inside `backward`, before any callback runs, so there is nothing to inspect or skip.
    """

    def __init__(self, trainer, max_steps: int):
        self.trainer = trainer
        self.max_steps = max_steps
        self.consecutive = 0
        self.enforced = trainer.accelerator.distributed_type != DistributedType.DEEPSPEED
        if not self.enforced and trainer.accelerator.is_main_process:
            logger.warning(
                f"max_nonfinite_steps={max_steps} is not enforced under DeepSpeed: the engine owns the gradients and "
                "steps inside backward, so hf_distill neither skips nor counts steps with NaN or inf gradients "
                "(DeepSpeed ZeRO-3 skips a step whose gradient norm is not finite itself, without counting it)"
            )

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if not self.enforced:
            return
        accelerator = self.trainer.accelerator
        bad = (~_all_finite(self.trainer.model)).to(accelerator.device).float()
        if accelerator.num_processes > 1:
            # Accelerate's reduce knows sum, mean and max: "any process is bad" is the max of the flags.
            bad = accelerator.reduce(bad, reduction="max")
        if bad.item() == 0.0:
            self.consecutive = 0
            return
        self.consecutive += 1
        step = state.global_step + 1
        self.trainer.model.zero_grad(set_to_none=True)
        if self.consecutive > self.max_steps:
            ids = self.trainer.step_example_ids()
            shown = ", ".join(map(str, ids[:32])) + (f", ... ({len(ids)} in all)" if len(ids) > 32 else "")
            raise NonFiniteLossError(
                "NaN or inf gradients",
                f"step {step}",
                f"{self.consecutive} consecutive steps had them (max_nonfinite_steps={self.max_steps}); examples of "
                f"step {step}: {shown or 'ids unavailable'}",
                "lower the learning rate (or raise max_nonfinite_steps) and rerun to resume from the last checkpoint",
            )
