"""FSDP2 on CPU under 2 processes (gloo), with the Accelerate FSDP2 plugin driving `fully_shard` directly: Accelerate
itself only enables FSDP on GPU-like devices, so a CPU run through `accelerate launch` would silently be DDP.

    torchrun --nproc_per_node 2 tests/scripts/fsdp2_check.py OUT_DIR [--chunked] [--accumulate]

`--accumulate` trains with 2 micro-batches per process and step through `DistillTrainer`'s own `get_batch_samples` and
`compute_loss`, syncing gradients only on the last micro-batch as Accelerate's `accumulate` does under FSDP2.
"""

import os
import sys
import types

import torch
import torch.distributed as dist
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from testing_utils import pad_collator, tiny_llama, variable_length_dataset  # noqa: E402

from hf_distill import DistillConfig, DistillTrainer  # noqa: E402
from hf_distill.losses import (  # noqa: E402
    DivergenceSpec,
    TeacherHeads,
    cross_entropy_loss,
    distillation_loss,
    fused_distillation_loss,
)
from hf_distill.models.hidden_states import final_hidden_states, lm_head  # noqa: E402
from hf_distill.run.process_group import leave_process_group  # noqa: E402
from hf_distill.teachers.placement import place_teacher  # noqa: E402


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
    """The trainer's fused path: final hidden states, then the LM head read after the forward, where FSDP2 leaves the
    root module's parameters (the LM head's among them) unsharded for the backward."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    hidden = final_hidden_states(student, student, inputs)[:, :-1]
    with torch.no_grad():
        teacher_hidden = final_hidden_states(teacher, teacher, inputs)[:, :-1]
    terms = fused_distillation_loss(
        hidden, lm_head(student), TeacherHeads([teacher_hidden], [lm_head(teacher)]), batch["labels"][:, 1:],
        DivergenceSpec(alpha=0.5, temperature=2.0), chunk_size=7,
    )  # fmt: skip
    return terms.loss / global_tokens


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


class CollectiveLog(TorchDispatchMode):
    """The c10d collectives run while active, seen at the dispatcher whatever Python API FSDP2 calls them through."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "c10d":
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))

    def reductions(self) -> list[str]:
        return [op for op in self.ops if "reduce" in op]


def full_weights(model) -> dict[str, torch.Tensor]:
    return {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in model.state_dict().items()}


def unreduced_gradients(student) -> dict[str, torch.Tensor]:
    """The gradients FSDP2 accumulates unsharded on this rank while gradient sync is off; they hang on the unsharded
    parameters, which only `unshard` puts back on the modules."""
    modules = [m for m in student.modules() if isinstance(m, FSDPModule)]
    for module in modules:
        module.unshard()
    grads = {name: p.grad.clone() for name, p in student.named_parameters()}
    for module in modules:
        module.reshard()
    return grads


def assert_grads_close(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for name in actual:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=1e-6, msg=name)


def train_accumulating(trainer, student, rank, world_size, steps=3, global_batch=8, micro_batches=2) -> int:
    """`train` with `micro_batches` per process and step, the loss from the trainer. A plain copy of the student on
    each rank computes this rank's own gradients, to tell unreduced gradients from reduced ones. Returns the number of
    micro-batches whose gradient sync was checked."""
    rows = list(variable_length_dataset())
    optimizer = torch.optim.SGD(student.parameters(), lr=0.5)
    mirror = tiny_llama(seed=1, hidden=32, layers=1)
    share = global_batch // world_size
    size = share // micro_batches
    checked = 0
    for step in range(steps):
        step_rows = rows[step * global_batch : (step + 1) * global_batch]
        rank_rows = step_rows[rank * share : (rank + 1) * share]
        micro = [pad_collator(rank_rows[m * size : (m + 1) * size]) for m in range(micro_batches)]
        micro, count = trainer.get_batch_samples(iter(micro), micro_batches, torch.device("cpu"))
        # The divisor is the whole step's target tokens on both processes, not this process's share.
        assert count == (pad_collator(step_rows)["labels"][:, 1:] != -100).sum(), count
        mirror.load_state_dict(full_weights(student))
        mirror.zero_grad()
        for m, batch in enumerate(micro):
            last = m == micro_batches - 1
            student.set_requires_gradient_sync(last)
            loss = trainer.compute_loss(student, batch, num_items_in_batch=count)
            with CollectiveLog() as log:
                loss.backward()
            trainer.compute_loss(mirror, batch, num_items_in_batch=count).backward()
            local = {name: p.grad for name, p in mirror.named_parameters()}
            if not last:
                # The log saw the backward's parameter all-gathers, so an empty reduction list is not a blind spot.
                assert log.ops and not log.reductions(), log.ops
                assert all(p.grad is None for p in student.parameters()), "a sharded gradient exists before the sync"
                unreduced = unreduced_gradients(student)
                assert_grads_close(unreduced, local)
                flat = torch.cat([g.flatten() for g in unreduced.values()])
                both = [torch.empty_like(flat) for _ in range(world_size)]
                dist.all_gather(both, flat)
                assert not torch.allclose(both[0], both[1], rtol=0, atol=1e-6), "the ranks hold the same gradients"
            else:
                assert any("reduce_scatter" in op for op in log.reductions()), log.ops
                # The reduction averages what each rank accumulated over all its micro-batches.
                for g in local.values():
                    dist.all_reduce(g)
                    g /= world_size
                assert all(isinstance(p.grad, DTensor) for p in student.parameters())
                assert_grads_close({name: p.grad.full_tensor() for name, p in student.named_parameters()}, local)
            checked += 1
        optimizer.step()
        optimizer.zero_grad()
    return checked


def main(out_dir: str, chunked: bool, accumulate: bool) -> None:
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
    checked = 0
    if accumulate:
        chunk_size = 7 if chunked else 0
        args = DistillConfig(
            output_dir=out_dir, use_cpu=True, alpha=0.5, temperature=2.0, loss_chunk_size=chunk_size, report_to=[]
        )
        trainer = DistillTrainer(model=student, teacher_model=teacher, args=args, data_collator=pad_collator)
        # compute_loss scales by the process count to undo the gradient average: it must see both processes.
        assert trainer.accelerator.num_processes == world_size
        assert trainer.teacher_model is teacher and trainer.uses_fused_loss("train") == chunked
        checked = train_accumulating(trainer, student, rank, world_size)
    else:
        train(student, teacher, rank, world_size, loss=chunked_step_loss if chunked else step_loss)
    weights = full_weights(student)
    if rank == 0:
        result = {"weights": weights, "world_size": world_size, "checked_micro_batches": checked}
        torch.save(result, os.path.join(out_dir, "result.pt"))


if __name__ == "__main__":
    main(sys.argv[1], chunked="--chunked" in sys.argv[2:], accumulate="--accumulate" in sys.argv[2:])
    leave_process_group()
