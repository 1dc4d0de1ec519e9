"""hf_distill: knowledge distillation for language models as an extension of `transformers.Trainer`.

The package is laid out by part (`docs/architecture.md`): `losses/`, `teachers/`, `models/`, `data/`, `generation/`,
`run/`, `arguments/`, `commands/`, `metrics/`; `trainer.py`, `config.py`, `trl_sft.py` and `cli.py` stay here."""

from . import moved_modules
from .config import DistillConfig
from .trainer import DistillTrainer

moved_modules.install()

__all__ = ["DistillConfig", "DistillTrainer"]
__version__ = "0.1.0"
