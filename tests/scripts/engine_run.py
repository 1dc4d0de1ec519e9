"""DistillTrainer under a real sharding engine on 2 CPU processes, through Trainer and Accelerate's own path; used by
tests/distributed/test_engines.py, which builds the same runs in one process (`build_trainer(None, ...)`) to compare.

    DS_ACCELERATOR=cpu torchrun --nproc_per_node 2 tests/scripts/engine_run.py OUT_DIR zero3 CASE [CASE ...]
    torchrun --nproc_per_node 2 tests/scripts/engine_run.py OUT_DIR fsdp2 CASE [CASE ...]

Each CASE (a key of `CASES`) is trained, checked inside the run, and its results saved by rank 0 to OUT_DIR/CASE.pt.
Many cases share one launch, because starting the processes costs more than training the tiny models.

Two settings make the engines run on CPU, both test-only:
- ZeRO-3: `DS_ACCELERATOR=cpu` in the environment, and `deepspeed.init_distributed(dist_backend="gloo")` before the
  arguments are built (without it DeepSpeed sees a world of 1 and stops on its batch-size check).
- FSDP2: Accelerate selects FSDP only over a GPU-like distributed type; on CPU (`MULTI_CPU`) it silently runs DDP.
  Once `args.device` has created the process state, its type is switched to `MULTI_GPU` so that the FSDP2 plugin is
  used; the device stays the CPU.
"""

import os
import sys
from typing import Any

import torch
import torch.distributed as dist
from accelerate.state import PartialState
from accelerate.utils import DistributedType
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from testing_utils import pad_collator, tiny_llama, variable_length_dataset, word_tokenizer  # noqa: E402

import hf_distill.trainer  # noqa: E402
from hf_distill import DistillConfig, DistillTrainer  # noqa: E402
from hf_distill.run.process_group import leave_process_group  # noqa: E402

GLOBAL_BATCH = 8
NAN_STEP = 2
RESUME_STEP = 2
MICRO_BATCHES = 2
STEPS = 3
EVAL_EXAMPLES = 6

ZERO3 = {
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "train_batch_size": "auto",
    "gradient_clipping": "auto",
    "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True},
}
FSDP2 = {
    "fsdp": True,
    "fsdp_config": {
        "version": 2,
        "reshard_after_forward": True,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"],
        # As accelerate_configs/fsdp2.yaml: sharded checkpoints; the final save switches to a full state dict.
        "state_dict_type": "SHARDED_STATE_DICT",
    },
}
ENGINE_ARGS = {None: {}, "zero3": {"deepspeed": ZERO3}, "fsdp2": FSDP2}
# Transformers cannot evaluate an FSDP2 model that was never prepared together with an optimizer (Accelerate's
# `prepare` refuses a lone FSDP2 model).
UNSUPPORTED = {"fsdp2": {"eval_first"}, "zero3": set()}
ENGINE_TYPES = {"zero3": DistributedType.DEEPSPEED, "fsdp2": DistributedType.FSDP}

# name: (DistillConfig overrides, number of teachers, what the run does besides training STEPS steps)
CASES: dict[str, tuple[dict[str, Any], int, str]] = {
    "dense": ({"alpha": 0.5, "loss_chunk_size": 0}, 1, "train"),
    "fused": ({"alpha": 0.5, "loss_chunk_size": 7}, 1, "train"),
    "ce_only": ({"alpha": 1.0, "loss_chunk_size": 7}, 1, "train"),
    "kd_only": ({"alpha": 0.0, "loss_chunk_size": 7}, 1, "train"),
    "ensemble": ({"alpha": 0.5, "loss_chunk_size": 7, "teacher_weights": [0.25, 0.75]}, 2, "train"),
    # Every step on the student's greedy completions: the ranks' prompts differ, so they finish generating at
    # different lengths, and sharded parameters need `synced_gpus` (every rank runs forward until all are done).
    "on_policy": (
        {
            "loss_chunk_size": 7,
            "lmbda": 1.0,
            "max_new_tokens": 5,
            "generation_temperature": 0.0,
            "loss_type": "reverse_kl",
        },
        1,
        "train",
    ),
    # 4 steps uninterrupted, with checkpoints at steps 2 and 4; then a second trainer resumes from the checkpoint of
    # step 2 and saves the final model.
    "resume": ({"alpha": 0.5, "loss_chunk_size": 7, "max_steps": 4, "save_steps": RESUME_STEP}, 1, "resume"),
    "eval": ({"alpha": 0.5}, 1, "evaluate"),
    # Evaluation of a model never trained: the engine wraps it for inference only.
    "eval_first": ({"alpha": 0.5}, 1, "evaluate_first"),
    # Step 2 is poisoned with NaN on rank 1 only (in one process: on the whole batch). A constant learning rate, so
    # that the comparison is of the skipped update, not of whether an engine's schedule counts a skipped step.
    "nan": ({"alpha": 0.5, "loss_chunk_size": 7, "max_steps": 4, "lr_scheduler_type": "constant"}, 1, "nan"),
}


def teachers(count: int) -> list:
    return [tiny_llama(seed=2 + i, hidden=48, layers=2) for i in range(count)]


def build_trainer(engine: str | None, output_dir: str, case: str, processes: int) -> DistillTrainer:
    """The run of `case` under `engine` (None: no engine, one process), with the same global batch of 8 in 2
    micro-batches per process."""
    overrides, n_teachers, action = CASES[case]
    overrides = dict(overrides)
    args = DistillConfig(
        output_dir=output_dir,
        use_cpu=True,
        per_device_train_batch_size=GLOBAL_BATCH // (processes * MICRO_BATCHES),
        gradient_accumulation_steps=MICRO_BATCHES,
        per_device_eval_batch_size=4,
        max_steps=overrides.pop("max_steps", STEPS),
        learning_rate=1e-3,
        adam_epsilon=1e-6,
        logging_steps=1,
        save_strategy="steps" if "save_steps" in overrides else "no",
        save_steps=overrides.pop("save_steps", 500),
        report_to=[],
        disable_tqdm=True,
        seed=0,
        data_seed=0,
        temperature=2.0,
        **overrides,
        **ENGINE_ARGS[engine],
    )
    if engine == "fsdp2":
        args.device  # noqa: B018 (creates the process state, whose type is then switched; see the docstring)
        PartialState().distributed_type = DistributedType.MULTI_GPU
    teacher = teachers(n_teachers)
    trainer = DistillTrainer(
        model=tiny_llama(seed=1, hidden=32, layers=1),
        teacher_model=teacher[0] if n_teachers == 1 else teacher,
        args=args,
        train_dataset=variable_length_dataset(),
        eval_dataset=variable_length_dataset(EVAL_EXAMPLES, seed=3) if "evaluate" in action else None,
        data_collator=pad_collator,
        processing_class=word_tokenizer() if overrides.get("lmbda") else None,
    )
    if action == "nan":
        poison_step(trainer, NAN_STEP, rank=1 if processes > 1 else 0)
    return trainer


def poison_step(trainer: DistillTrainer, step: int, rank: int) -> None:
    """NaN hidden states in the student's forward of optimizer step `step`, on process `rank` only."""

    def poison(module, args, output):
        if module.training and trainer.state.global_step + 1 == step and trainer.args.process_index == rank:
            output.last_hidden_state = output.last_hidden_state * float("nan")
        return output

    trainer.accelerator.unwrap_model(trainer.model).get_decoder().register_forward_hook(poison)


def full_weights(trainer: DistillTrainer) -> dict[str, torch.Tensor]:
    """The student's whole weights, on every process (a collective)."""
    student = trainer.accelerator.unwrap_model(trainer.model)
    if trainer.is_deepspeed_enabled:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(student.parameters())):
            return {k: v.detach().clone() for k, v in student.state_dict().items()}
    whole = {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in student.state_dict().items()}
    return {k: v.detach().clone() for k, v in whole.items()}


def teacher_members(trainer: DistillTrainer) -> list:
    return trainer.teacher.models


def check_engine(trainer: DistillTrainer, engine: str) -> None:
    """The run is the engine it claims, over 2 processes, and every teacher is sharded and frozen."""
    assert dist.get_world_size() == 2 and trainer.accelerator.num_processes == 2, "no 2-process group was formed"
    assert trainer.accelerator.distributed_type == ENGINE_TYPES[engine], trainer.accelerator.distributed_type
    for teacher in teacher_members(trainer):
        params = list(teacher.parameters())
        # DeepSpeedEngine.eval() puts the wrapped module in eval mode, not the engine itself.
        module = trainer.accelerator.unwrap_model(teacher)
        assert params and not module.training and not any(p.requires_grad for p in params)
        if engine == "zero3":
            assert type(teacher).__name__ == "DeepSpeedEngine", type(teacher)
        check_sharded(module, engine)


def check_sharded(model: torch.nn.Module, engine: str) -> None:
    """Every parameter is this process's part only; under FSDP2 each decoder layer is its own unit, as the
    transformer-layer auto-wrap policy says."""
    params = list(model.parameters())
    assert params
    if engine == "zero3":
        # This process's partition (`ds_tensor`) is part of the whole. (Outside a forward the parameter itself is
        # empty, except small ones that ZeRO-3 keeps gathered once used: below `stage3_param_persistence_threshold`.)
        assert all(p.ds_tensor.numel() < p.ds_numel for p in params)
    else:
        assert all(isinstance(p, DTensor) and p.to_local().numel() < p.numel() for p in params)
        assert all(isinstance(layer, FSDPModule) for layer in model.model.layers), type(model.model.layers[0])


def optimizer_parameters(trainer: DistillTrainer) -> list[torch.Tensor]:
    """The parameters the optimizer steps (under ZeRO-3: the model parameters its partitions belong to)."""
    optimizer = trainer.optimizer.optimizer
    if trainer.is_deepspeed_enabled:
        return [p for group in optimizer.fp16_groups for p in group]
    return [p for group in optimizer.param_groups for p in group["params"]]


def check_optimizer(trainer: DistillTrainer) -> None:
    """The optimizer holds exactly the student's parameters: no teacher parameter."""
    stepped = {id(p) for p in optimizer_parameters(trainer)}
    student = trainer.accelerator.unwrap_model(trainer.model)
    assert stepped == {id(p) for p in student.parameters()}
    assert not stepped & {id(p) for teacher in teacher_members(trainer) for p in teacher.parameters()}


class FusedCalls:
    """Counts the fused chunked loss's calls, to tell which path training took."""

    def __init__(self):
        self.count = 0
        self.fused = hf_distill.trainer.fused_distillation_loss
        hf_distill.trainer.fused_distillation_loss = self

    def __call__(self, *args, **kwargs):
        self.count += 1
        return self.fused(*args, **kwargs)

    def restore(self) -> None:
        hf_distill.trainer.fused_distillation_loss = self.fused


def run_case(out_dir: str, engine: str, case: str) -> dict[str, Any]:
    action = CASES[case][2]
    run_dir = os.path.join(out_dir, case)
    trainer = build_trainer(engine, run_dir, case, processes=2)
    check_engine(trainer, engine)
    result: dict[str, Any] = {"world_size": dist.get_world_size(), "uses_fused_loss": trainer.uses_fused_loss("train")}
    calls = FusedCalls()
    try:
        if action == "evaluate_first":
            result["metrics"] = trainer.evaluate()
        else:
            trainer.train()
            # The student is prepared by the engine when training starts.
            check_sharded(trainer.accelerator.unwrap_model(trainer.model), engine)
            check_optimizer(trainer)
        if action == "evaluate":
            result["metrics"] = trainer.evaluate()
        if action == "resume":
            result["uninterrupted_weights"] = full_weights(trainer)
            trainer = build_trainer(engine, run_dir, case, processes=2)
            trainer.train(resume_from_checkpoint=os.path.join(run_dir, f"checkpoint-{RESUME_STEP}"))
            check_optimizer(trainer)
            if trainer.is_fsdp_enabled:
                # As hf_distill.commands.train.run_training does: sharded checkpoints, one full final save.
                trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
            trainer.save_model(os.path.join(run_dir, "final"))
    finally:
        calls.restore()
    result["fused_calls"] = calls.count
    result["global_step"] = trainer.state.global_step
    result["weights"] = full_weights(trainer)
    result["losses"] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return result


def main(out_dir: str, engine: str, cases: list[str]) -> None:
    if engine == "zero3":
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
    for case in cases:
        result = run_case(out_dir, engine, case)
        if dist.get_rank() == 0:
            torch.save(result, os.path.join(out_dir, f"{case}.pt"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
    leave_process_group()
