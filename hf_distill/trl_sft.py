"""Distilling from a TRL SFT script: `DistillSFTConfig` and `DistillSFTTrainer` are `SFTConfig` and `SFTTrainer` with
a teacher. TRL prepares the data (text, chat `messages`, prompt-completion, packing, `completion_only_loss`,
`assistant_only_loss`, `formatting_func`, PEFT); DistillTrainer computes the loss. Needs `pip install hf_distill[trl]`.

    from hf_distill.trl_sft import DistillSFTConfig as SFTConfig, DistillSFTTrainer as SFTTrainer
"""

from dataclasses import dataclass
from typing import Any

from trl import SFTConfig, SFTTrainer

from .config import DistillConfig
from .trainer import DistillTrainer

# SFTConfig's own `loss_type` values: in DistillSFTConfig the name is DistillConfig's divergence.
SFT_LOSS_TYPES = ("nll", "dft", "chunked_nll")


@dataclass
class DistillSFTConfig(DistillConfig, SFTConfig):
    r"""
    Arguments of [`DistillSFTTrainer`]: every field of `DistillConfig` and of TRL's `SFTConfig`.

    Where both define a field, DistillConfig's wins: `loss_type` is the divergence (`forward_kl`, ...), and SFT's
    `nll` is the CE term weighted by `alpha`; SFT's `dft` is refused. The `TrainingArguments` defaults are
    transformers' (DistillConfig's), not those TRL changes (`logging_steps` 500, `gradient_checkpointing` False,
    `bf16` False, `learning_rate` 5e-5): set them explicitly. A teacher given by path is loaded with
    `teacher_model_init_kwargs` (SFT's `model_init_kwargs` and `trust_remote_code` are the student's). SFT's
    `router_aux_loss_coef` is refused when set other than 0: DistillTrainer's loss has no Mixture-of-Experts
    auxiliary term.
    """

    def __post_init__(self):
        if self.loss_type in SFT_LOSS_TYPES:
            raise ValueError(
                f"loss_type={self.loss_type!r} is SFTConfig's loss; in DistillSFTConfig loss_type is the divergence "
                "(DistillConfig's: forward_kl, ...), and SFT's negative log-likelihood is the CE term, weighted by "
                "alpha; DFT is not supported"
            )
        if self.router_aux_loss_coef:
            raise ValueError(
                f"router_aux_loss_coef={self.router_aux_loss_coef}: DistillTrainer's loss has no Mixture-of-Experts "
                "auxiliary term, so it would be ignored; leave it unset"
            )
        super().__post_init__()


class DistillSFTTrainer(DistillTrainer, SFTTrainer):
    """`SFTTrainer` (data preparation, collator, PEFT, model loading by name) with `DistillTrainer`'s teacher, loss,
    metrics and checkpoints. Takes SFTTrainer's arguments plus `teacher_model`; `args` must be a `DistillSFTConfig`.

    The loss is DistillTrainer's `alpha * CE + (1 - alpha) * T**2 * D(teacher || student)` on the labels SFT prepares
    (-100 where `completion_only_loss` or `assistant_only_loss` mask), divided by the target tokens of the optimizer
    step across processes. SFTTrainer's own metrics (`entropy`, `mean_token_accuracy`, `num_tokens`), computed by its
    loss, are not logged; `ce_loss`, `kd_loss` and the evaluation metrics of DistillTrainer are.
    """

    def __init__(
        self,
        model: Any = None,
        args: DistillSFTConfig | None = None,
        *trainer_args: Any,
        teacher_model: Any = None,
        **trainer_kwargs: Any,
    ):
        if not isinstance(args, DistillSFTConfig):
            raise TypeError(f"args must be a DistillSFTConfig, got {type(args).__name__}")
        super().__init__(model, args, *trainer_args, teacher_model=teacher_model, **trainer_kwargs)

    def _init_base_trainer(self, model, args: DistillSFTConfig, **trainer_kwargs) -> None:
        # SFTTrainer.__init__ refuses any loss_type but its own: it is shown "nll" (the CE term) while it builds, and
        # the divergence is put back before DistillTrainer reads it (right after, to build the run's loss spec).
        loss_type, args.loss_type = args.loss_type, "nll"
        try:
            super()._init_base_trainer(model, args, **trainer_kwargs)
        finally:
            args.loss_type = loss_type
