"""`TrainingArguments` values that `Trainer` would crash on or silently mishandle, refused (or warned about) when the
config is built, before any data or model is loaded."""

import logging
import math

from .user_errors import UserInputError

logger = logging.getLogger(__name__)

# Outside this range a softened distribution is nearly one-hot or nearly uniform: the divergence then carries almost
# no signal about the teacher, and a run with `temperature: 1e6` would train on noise without a word.
TEMPERATURE_RANGE = (0.05, 20.0)


def check_training_arguments(config) -> None:
    """Raise a one-line ValueError naming the field and value; warn for a temperature outside `TEMPERATURE_RANGE`.

    Runs after `TrainingArguments.__post_init__`, which decides the device the precision flags are checked against.
    """
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(config, name) < 1:
            raise UserInputError(f"{name} must be >= 1, got {name}={getattr(config, name)}")
    # Trainer reads max_steps <= 0 as "train num_train_epochs": -5 or 0 would run whole epochs instead.
    if config.max_steps == 0 or config.max_steps < -1:
        raise UserInputError(
            f"max_steps must be >= 1, or -1 to train num_train_epochs, got max_steps={config.max_steps}"
        )
    if config.max_steps == -1 and not config.num_train_epochs > 0:
        raise UserInputError(
            f"num_train_epochs must be > 0 when max_steps=-1 (nothing would train), got "
            f"num_train_epochs={config.num_train_epochs}"
        )
    # The device only when asked for: reading it sets up the distributed state.
    if config.fp16 and config.device.type == "cpu":
        # Accelerate has no float16 autocast on the CPU: the run would silently train in float32.
        raise UserInputError("fp16=True needs a GPU, but this run is on the cpu; set fp16: false (bf16 works on cpu)")
    temperature = config.temperature
    if not math.isfinite(temperature):
        raise UserInputError(f"temperature must be finite, got temperature={temperature}")
    low, high = TEMPERATURE_RANGE
    if not low <= temperature <= high:
        logger.warning(
            f"temperature={temperature} is outside [{low}, {high}]: the softened distributions are nearly "
            f"{'one-hot' if temperature < low else 'uniform'}, so the divergence says little about the teacher"
        )
