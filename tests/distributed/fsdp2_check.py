"""FSDP2 on CPU under 2 processes (gloo), with the Accelerate FSDP2 plugin driving `fully_shard` directly: Accelerate
itself only enables FSDP on GPU-like devices, so a CPU run through `accelerate launch` would silently be DDP.

    torchrun --nproc_per_node 2 tests/distributed/fsdp2_check.py OUT_DIR
"""

import os
import sys
import types

import torch
import torch.distributed as dist
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from conftest import pad_collator, tiny_llama, variable_length_dataset  # noqa: E402

from hf_distill.losses import cross_entropy_loss, distillation_loss  # noqa: E402
from hf_distill.teacher_placement import place_teacher  # noqa: E402


def fsdp2_accelerator() -> types.SimpleNamespace:
    """The attributes of an Accelerator that FSDP2 preparation reads, as a GPU FSDP2 config would set them."""
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2, auto_wrap_policy="transformer_based_wrap", reshard_after_forward=True
    )
    return types.SimpleNamespace(
        distributed_type=DistributedType.FSDP,
        is_fsdp2=True,
        state=types.SimpleNamespace(fsdp_plugin=plugin),
        torch_device_mesh=None,
        mixed_precision="no",
        device=torch.device("cpu"),
    )


def step_loss(student, teacher, batch, global_tokens):
    """The trainer's objective: sums over this rank's tokens divided by the tokens of the whole step."""
    student_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    with torch.no_grad():
        teacher_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    targets = batch["labels"][:, 1:]
    ce = cross_entropy_loss(student_logits, targets)
    kd = distillation_loss(student_logits, teacher_logits, targets, temperature=2.0)
    return (0.5 * ce + 0.5 * kd) / global_tokens


def train(student, teacher, rank, world_size, steps=3, global_batch=8):
    rows = list(variable_length_dataset())
    optimizer = torch.optim.SGD(student.parameters(), lr=0.5)
    for step in range(steps):
        step_rows = rows[step * global_batch : (step + 1) * global_batch]
        global_tokens = (pad_collator(step_rows)["labels"][:, 1:] != -100).sum()
        share = global_batch // world_size
        batch = pad_collator(step_rows[rank * share : (rank + 1) * share])
        # FSDP2 averages gradients over ranks; the world size turns that average back into the global sum.
        (step_loss(student, teacher, batch, global_tokens) * world_size).backward()
        optimizer.step()
        optimizer.zero_grad()


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    assert world_size == 2, "no 2-process group was formed"
    accelerator = fsdp2_accelerator()

    teacher = place_teacher(tiny_llama(seed=2, hidden=48, layers=2), accelerator)
    assert isinstance(teacher, FSDPModule) and not teacher.training
    assert all(isinstance(p, DTensor) and not p.requires_grad for p in teacher.parameters())
    # Each rank holds only its shard of the teacher.
    local = sum(p.to_local().numel() for p in teacher.parameters())
    assert local < sum(p.numel() for p in tiny_llama(seed=2, hidden=48, layers=2).parameters())

    from accelerate.utils.fsdp_utils import fsdp2_prepare_model

    student = fsdp2_prepare_model(accelerator, tiny_llama(seed=1, hidden=32, layers=1))
    assert all(isinstance(p, DTensor) for p in student.parameters())
    train(student, teacher, rank, world_size)
    weights = {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in student.state_dict().items()}
    if rank == 0:
        torch.save({"weights": weights, "world_size": world_size}, os.path.join(out_dir, "result.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
