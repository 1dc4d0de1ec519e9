"""Skipping optimizer steps whose gradients hold NaN or inf, and stopping a run that keeps producing them."""

import torch
from torch.distributed.tensor import DTensor
from transformers import TrainerCallback


class NonFiniteLossError(RuntimeError):
    """Training produced NaN or inf gradients for more consecutive steps than `max_nonfinite_steps` allows."""


def _all_finite(model: torch.nn.Module) -> torch.Tensor:
    flags = [
        (g.to_local() if isinstance(g, DTensor) else g).isfinite().all()
        for g in (p.grad for p in model.parameters())
        if g is not None
    ]
    return torch.stack(flags).all() if flags else torch.tensor(True)


class NonFiniteGuard(TrainerCallback):
    """Before each optimizer step, drops the gradients if any process has a NaN or inf in them, so the step changes
    no weight; after `max_steps` consecutive such steps, raises `NonFiniteLossError` naming the step and the ids of
    its examples.

    The decision is reduced over processes, so every rank skips (or raises) together and none waits on the others.
    """

    def __init__(self, trainer, max_steps: int):
        self.trainer = trainer
        self.max_steps = max_steps
        self.consecutive = 0

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
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
                f"step {step}: NaN or inf gradients for {self.consecutive} consecutive steps "
                f"(max_nonfinite_steps={self.max_steps}); examples of step {step}: {shown or 'ids unavailable'}"
            )
