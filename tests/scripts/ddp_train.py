"""Train a tiny student under 2 processes and save its weights (rank 0); used by test_ddp.py.

torchrun --nproc_per_node 2 tests/scripts/ddp_train.py OUT_DIR [--per_device_train_batch_size 4 ...]
torchrun --nproc_per_node 2 tests/scripts/ddp_train.py OUT_DIR --evaluate   # evaluate instead of training
"""

import argparse
import os
import sys

import torch
import torch.distributed as dist
from datasets import Dataset
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel
from transformers import TrainerCallback

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from testing_utils import pad_collator, tiny_llama, variable_length_dataset, word_tokenizer  # noqa: E402

from hf_distill import DistillConfig, DistillTrainer  # noqa: E402
from hf_distill.run.process_group import leave_process_group  # noqa: E402


def half_masked_dataset() -> Dataset:
    """Every other example has no target token, so some micro-batches of one rank hold zero valid tokens."""
    rows = list(variable_length_dataset(16))
    for i in range(0, len(rows), 2):
        rows[i]["labels"] = [-100] * len(rows[i]["labels"])
    return Dataset.from_list(rows)


class SyncCounter(TrainerCallback):
    """Counts DDP gradient all-reduces through a communication hook on the wrapped student."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.calls = 0

    def on_train_begin(self, args, state, control, **kwargs):
        ddp = self.trainer.model_wrapped
        assert isinstance(ddp, DistributedDataParallel), type(ddp)

        def hook(process_group, bucket):
            self.calls += 1
            return default_hooks.allreduce_hook(process_group, bucket)

        ddp.register_comm_hook(None, hook)


# Evaluation: 6 examples at 4 per process, so the second process's only batch holds 2 examples and 2 duplicates
# that Accelerate pads in (even_batches).
EVAL_EXAMPLES = 6
EVAL_BATCH_SIZE = 4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("--per_device_train_batch_size", type=int, default=4)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--max_steps", type=int, default=3)
    parser.add_argument("--save_steps", type=int, default=None)
    parser.add_argument("--save_total_limit", type=int, default=None)
    parser.add_argument("--resume_from_checkpoint", default=None)
    parser.add_argument("--half_masked", action="store_true")
    parser.add_argument("--count_syncs", action="store_true")
    parser.add_argument("--loss_chunk_size", type=int, default=1024)
    parser.add_argument("--evaluate", action="store_true")
    parser.add_argument("--on_policy", action="store_true", help="lmbda=1: every step on the student's greedy samples")
    return parser.parse_args(argv)


def build_trainer(opts: argparse.Namespace) -> DistillTrainer:
    """The run of `opts`; test_ddp.py builds the same one in a single process to compare with."""
    args = DistillConfig(
        output_dir=opts.output_dir,
        use_cpu=True,
        per_device_train_batch_size=opts.per_device_train_batch_size,
        per_device_eval_batch_size=EVAL_BATCH_SIZE,
        gradient_accumulation_steps=opts.gradient_accumulation_steps,
        max_steps=opts.max_steps,
        learning_rate=1e-3,
        adam_epsilon=1e-6,
        logging_steps=1,
        save_strategy="no" if opts.save_steps is None else "steps",
        save_steps=opts.save_steps or 500,
        save_total_limit=opts.save_total_limit,
        report_to=[],
        disable_tqdm=True,
        seed=0,
        data_seed=0,
        temperature=2.0,
        loss_chunk_size=opts.loss_chunk_size,
        lmbda=1.0 if opts.on_policy else 0.0,
        max_new_tokens=5,
        generation_temperature=0.0,
        loss_type="reverse_kl" if opts.on_policy else "forward_kl",
    )
    return DistillTrainer(
        model=tiny_llama(seed=1, hidden=32, layers=1),
        teacher_model=tiny_llama(seed=2, hidden=48, layers=2),
        args=args,
        train_dataset=half_masked_dataset() if opts.half_masked else variable_length_dataset(),
        eval_dataset=variable_length_dataset(EVAL_EXAMPLES, seed=3) if opts.evaluate else None,
        data_collator=pad_collator,
        processing_class=word_tokenizer() if opts.on_policy else None,
    )


def main() -> None:
    opts = parse_args()
    trainer = build_trainer(opts)
    syncs = SyncCounter(trainer)
    if opts.count_syncs:
        trainer.add_callback(syncs)
    # The trap this guards against: two processes that each train alone also finish without an error.
    assert dist.is_initialized() and dist.get_world_size() == 2, "no 2-process group was formed"
    assert trainer.accelerator.num_processes == 2
    metrics = None
    if opts.evaluate:
        metrics = trainer.evaluate()
    else:
        trainer.train(resume_from_checkpoint=opts.resume_from_checkpoint)

    flat = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(2)]
    dist.all_gather(gathered, flat)
    # Gradients were synchronised iff both replicas took identical steps.
    assert torch.equal(gathered[0], gathered[1]), "replicas diverged: gradients were not synchronised"
    if dist.get_rank() == 0:
        unwrapped = trainer.accelerator.unwrap_model(trainer.model)
        result = {
            "weights": {k: v.detach().cpu() for k, v in unwrapped.state_dict().items()},
            "log_history": trainer.state.log_history,
            "world_size": dist.get_world_size(),
            "syncs": syncs.calls,
            "metrics": metrics,
        }
        torch.save(result, os.path.join(opts.output_dir, "result.pt"))


if __name__ == "__main__":
    main()
    leave_process_group()
