"""hf_distill: knowledge distillation for language models as an extension of `transformers.Trainer`."""

from .config import DistillConfig
from .trainer import DistillTrainer

__all__ = ["DistillConfig", "DistillTrainer"]
__version__ = "0.1.0"
