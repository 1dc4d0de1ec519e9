"""FSDP2 on CPU under 2 processes (gloo), with the Accelerate FSDP2 plugin driving `fully_shard` directly: Accelerate
itself only enables FSDP on GPU-like devices, so a CPU run through `accelerate launch` would silently be DDP.

    torchrun --nproc_per_node 2 tests/distributed/fsdp2_check.py OUT_DIR [--chunked]
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

from hf_distill.hidden_states import final_hidden_states, lm_head  # noqa: E402
from hf_distill.losses import cross_entropy_loss, distillation_loss, linear_distillation_loss_parts  # noqa: E402
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


def chunked_step_loss(student, teacher, batch, global_tokens):
    """The trainer's fused path: final hidden states and the LM head (a DTensor shard outside forward under FSDP2)."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    hidden = final_hidden_states(student, student, inputs)[:, :-1]
    with torch.no_grad():
        teacher_hidden = final_hidden_states(teacher, teacher, inputs)[:, :-1]
    parts = linear_distillation_loss_parts(
        hidden, lm_head(student).weight, teacher_hidden, lm_head(teacher).weight, batch["labels"][:, 1:],
        alpha=0.5, temperature=2.0, chunk_size=7,
    )  # fmt: skip
    return parts.loss / global_tokens


def step_loss(student, teacher, batch, global_tokens):
    """The trainer's objective: sums over this rank's tokens divided by the tokens of the whole step."""
    student_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    with torch.no_grad():
        teacher_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    targets = batch["labels"][:, 1:]
    ce = cross_entropy_loss(student_logits, targets)
    kd = distillation_loss(student_logits, teacher_logits, targets, temperature=2.0)
    return (0.5 * ce + 0.5 * kd) / global_tokens


def train(student, teacher, rank, world_size, steps=3, global_batch=8, loss=step_loss):
    rows = list(variable_length_dataset())
    optimizer = torch.optim.SGD(student.parameters(), lr=0.5)
    for step in range(steps):
        step_rows = rows[step * global_batch : (step + 1) * global_batch]
        global_tokens = (pad_collator(step_rows)["labels"][:, 1:] != -100).sum()
        share = global_batch // world_size
        batch = pad_collator(step_rows[rank * share : (rank + 1) * share])
        # FSDP2 averages gradients over ranks; the world size turns that average back into the global sum.
        (loss(student, teacher, batch, global_tokens) * world_size).backward()
        optimizer.step()
        optimizer.zero_grad()


def main(out_dir: str, chunked: bool) -> None:
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
    train(student, teacher, rank, world_size, loss=chunked_step_loss if chunked else step_loss)
    weights = {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in student.state_dict().items()}
    if rank == 0:
        torch.save({"weights": weights, "world_size": world_size}, os.path.join(out_dir, "result.pt"))
    # Both ranks leave together: a rank exiting while the other still talks to gloo aborts ("terminate called").
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], chunked="--chunked" in sys.argv[2:])
    # torch 2.13's gloo threads sometimes abort in C++ static destructors at interpreter exit ("terminate called
    # without an active exception", exit -6) after all work is done and saved; leave without running them.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
