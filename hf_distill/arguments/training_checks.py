"""The checks of a `DistillConfig` that are not one field's declared rule (`field_rules`), written out: its settings
that cannot work together (`check_distillation_settings`), and the `TrainingArguments` values that `Trainer` would
crash on or silently mishandle (`check_step_intervals`, `check_training_arguments`). All run when the config is
built, before any data or model is loaded."""

import logging
import math
import os
from urllib.parse import urlsplit

from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK, get_available_reporting_integrations

from ..losses.sparse import check_sparse_mode
from ..user_errors import UserInputError, bad_value

logger = logging.getLogger(__name__)

# Outside this range a softened distribution is nearly one-hot or nearly uniform: the divergence then carries almost
# no signal about the teacher, and a run with `temperature: 1e6` would train on noise without a word.
TEMPERATURE_RANGE = (0.05, 20.0)


def _whole(value):
    """A number as a user writes it: `500`, not the `500.0` a float field holds."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _strategy(value) -> str:
    return getattr(value, "value", value)


def check_distillation_settings(config) -> None:
    """The distillation fields' rules that join several fields (or need code, like a list of teachers): a one-line
    `UserInputError` naming the settings that cannot work together. Runs after `check_declared_fields`, so each
    field's own value is valid here."""
    teachers = config.teacher_model_name_or_path
    if isinstance(teachers, list | tuple) and not teachers:
        raise bad_value(
            "teacher_model_name_or_path", [], "an empty list names no teacher", "give a path, a list of paths, or None"
        )
    if config.teacher_weights is not None:
        # With the teachers passed to the trainer instead, their number is only known there.
        config.ensemble_weights(len(teachers) if isinstance(teachers, list | tuple) else len(config.teacher_weights))
    if config.use_teacher_server:
        _check_server_settings(config)
    if config.teacher_cache_dir is not None or config.use_teacher_server:
        check_sparse_mode(config.teacher_cache_mode, config.loss_type)
    if config.generates:
        _check_generation_settings(config)
    if config.cross_tokenizer != "off":
        _check_cross_tokenizer_settings(config)
    if config.early_stop_patience is not None and _strategy(config.eval_strategy) == "no":
        raise UserInputError(
            "early stopping without evaluation",
            f"early_stop_patience={config.early_stop_patience}",
            "it stops on the eval loss, and eval_strategy is 'no'",
            "set eval_strategy to 'steps' or 'epoch'",
        )


# Settings of a teacher run here, which a teacher behind a server would leave unread.
_LOCAL_TEACHER_FIELDS = (
    "teacher_model_name_or_path",
    "teacher_cache_dir",
    "teacher_weights",
    "teacher_model_init_kwargs",
)


def _check_server_settings(config) -> None:
    for name in _LOCAL_TEACHER_FIELDS:
        if getattr(config, name) is not None:
            raise UserInputError(
                f"{name} with a teacher server",
                f"use_teacher_server=True, {name}={getattr(config, name)!r}",
                "the server's teacher is the run's teacher: no teacher is loaded or read here, so it would be ignored",
                f"remove {name}, or set use_teacher_server: false",
            )
    refusals = (
        (config.alpha == 1.0, "alpha=1.0", "alpha=1.0 distils from no teacher", "set alpha < 1"),
        (
            config.cross_tokenizer != "off",
            f"cross_tokenizer={config.cross_tokenizer!r}",
            "the server's top-k ids are in the student's vocabulary, not aligned spans of another tokenizer",
            "serve a teacher with the student's tokenizer and set cross_tokenizer: off",
        ),
        (
            config.seq_kd,
            "seq_kd=True",
            "seq_kd needs the teacher to write completions, and the server only scores tokens here",
            "set seq_kd: false (on-policy lmbda works: the server scores the student's completions)",
        ),
    )
    for refused, setting, why, fix in refusals:
        if refused:
            raise UserInputError(
                "a teacher server with an unsupported setting", f"use_teacher_server=True, {setting}", why, fix
            )
    url = config.teacher_model_server_url
    parts = urlsplit(url or "")
    try:
        port = parts.port
    except ValueError:
        port = None
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or port is None
        or parts.path not in ("", "/", "/v1", "/v1/")
        or parts.query
        or parts.fragment
        or parts.username
    ):
        raise bad_value(
            "teacher_model_server_url",
            url,
            "use_teacher_server needs the server as http(s)://HOST:PORT",
            "set it to the vLLM server's address, e.g. http://127.0.0.1:8000",
        )


def _check_generation_settings(config) -> None:
    setting = config.generation_setting
    if config.teacher_cache_dir is not None:
        raise UserInputError(
            "generated text with a teacher cache",
            f"{setting}, teacher_cache_dir={config.teacher_cache_dir!r}",
            f"{setting} trains on generated text, which a teacher cache cannot score",
            "unset teacher_cache_dir (a live teacher scores every generated token)",
        )
    if config.alpha == 1.0:
        raise UserInputError(
            "generation without a teacher", f"{setting}, alpha=1.0", "alpha=1.0 loads no teacher", "set alpha < 1"
        )
    if config.seq_kd and len(config.teacher_paths) > 1:
        raise UserInputError(
            "seq_kd with an ensemble",
            "seq_kd=True, teacher_model_name_or_path",
            f"seq_kd=True needs one teacher to generate, got an ensemble of {len(config.teacher_paths)}",
            "name one teacher, or set seq_kd: false",
        )


def _check_cross_tokenizer_settings(config) -> None:
    mode = config.cross_tokenizer
    if config.alpha == 1.0:
        raise UserInputError(
            "cross-tokenizer distillation without a teacher",
            f"cross_tokenizer={mode!r}, alpha=1.0",
            "alpha=1.0 loads no teacher",
            "set alpha < 1, or cross_tokenizer: off",
        )
    if config.teacher_cache_dir is not None:
        raise UserInputError(
            "cross-tokenizer distillation from a teacher cache",
            f"cross_tokenizer={mode!r}, teacher_cache_dir={config.teacher_cache_dir!r}",
            "the cache holds top-k ids in the teacher's vocabulary, not aligned spans",
            "unset one of them",
        )
    if config.generates:
        raise UserInputError(
            "cross-tokenizer distillation with generation",
            f"cross_tokenizer={mode!r}, {config.generation_setting}",
            "generated text is not re-tokenized for the teacher",
            "use off-policy distillation (lmbda: 0, seq_kd: false)",
        )
    if len(config.teacher_paths) > 1:
        raise UserInputError(
            "cross-tokenizer distillation from an ensemble",
            f"cross_tokenizer={mode!r}, teacher_model_name_or_path",
            f"it takes one teacher, got an ensemble of {len(config.teacher_paths)}",
            "name one teacher",
        )


def check_step_intervals(config) -> None:
    """`save_steps`, `eval_steps` and `logging_steps` under their strategy `steps`, checked as given: before
    `TrainingArguments.__post_init__`, which silently replaces `eval_steps: 0` by `logging_steps`."""
    for kind, strategy_field in (
        ("save", "save_strategy"),
        ("eval", "eval_strategy"),
        ("logging", "logging_strategy"),
    ):
        name, strategy = f"{kind}_steps", _strategy(getattr(config, strategy_field))
        value = getattr(config, name)
        if strategy != "steps" or (value is None and kind == "eval"):  # eval_steps None: every logging_steps
            continue
        fix = f"set {name} to a number of steps >= 1 (or a fraction in (0, 1) of the run's steps)"
        if value is None or not value > 0:
            raise bad_value(name, _whole(value), f"{strategy_field}='steps' needs a positive interval", fix)
        if value > 1 and not float(value).is_integer():
            raise bad_value(name, _whole(value), "above 1 it counts steps, which are whole", fix)


def _check_report_to(config) -> None:
    installed = set(get_available_reporting_integrations())
    for name in config.report_to or []:
        if name not in INTEGRATION_TO_CALLBACK:
            raise bad_value(
                "report_to",
                config.report_to,
                f"{name!r} is not an integration transformers knows",
                f"use some of {', '.join(sorted(INTEGRATION_TO_CALLBACK))}, 'all' or 'none'",
            )
        if name not in installed:
            raise bad_value(
                "report_to",
                config.report_to,
                f"{name!r} is not installed (the run would stop when the trainer is built)",
                f"pip install {_PACKAGES.get(name, name)}, or remove {name!r} from report_to",
            )


# How Transformers starts the message of DeepSpeed config values that disagree with the arguments, one per line after.
DEEPSPEED_MISMATCH = "Please correct the following DeepSpeed config values that mismatch TrainingArguments values:"


def deepspeed_mismatch_error(config, mismatches: list[str]) -> UserInputError:
    """DeepSpeed config values that disagree with the recipe (Transformers' `- ds key=value vs hf field=value`
    lines), in one line. A config given to `accelerate launch` is checked by Transformers only once training starts:
    `pipeline.run_training` turns that error into this one."""
    if isinstance(config.deepspeed, str):
        where = f"deepspeed={config.deepspeed!r}"
    else:
        where = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE") or "the DeepSpeed config"
    return UserInputError(
        "DeepSpeed config disagrees with the recipe",
        where,
        ", ".join(m.removeprefix("- ") for m in mismatches),
        "set those DeepSpeed values to 'auto' (or to the recipe's)",
    )


# Integrations whose pip package has another name.
_PACKAGES = {"azure_ml": "azureml-core", "flyte": "flytekit"}


def check_training_arguments(config) -> None:
    """Raise a one-line `UserInputError` naming the field and value; warn for a temperature outside
    `TEMPERATURE_RANGE`.

    Runs after `TrainingArguments.__post_init__`, which decides the device the precision flags are checked against.
    """
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(config, name) < 1:
            raise bad_value(name, getattr(config, name), "must be >= 1", f"set {name} to 1 or more")
    # Trainer reads max_steps <= 0 as "train num_train_epochs": -5 or 0 would run whole epochs instead.
    if config.max_steps == 0 or config.max_steps < -1:
        raise bad_value(
            "max_steps",
            config.max_steps,
            "Trainer would read it as -1 and train whole epochs",
            "set max_steps to 1 or more, or -1 to train num_train_epochs",
        )
    if config.max_steps == -1 and not config.num_train_epochs > 0:
        raise bad_value(
            "num_train_epochs",
            _whole(config.num_train_epochs),
            "with max_steps=-1 nothing would train, yet a model card would be written",
            "set num_train_epochs > 0, or max_steps >= 1",
        )
    if config.output_dir == "":
        raise bad_value("output_dir", "", "an empty path would write the run into the current folder", "name a folder")
    # The device only when asked for: reading it sets up the distributed state.
    if config.fp16 and config.device.type == "cpu":
        # Accelerate has no float16 autocast on the CPU: the run would silently train in float32.
        raise bad_value(
            "fp16",
            True,
            "this run is on the cpu, which has no float16 autocast",
            "set fp16: false (bf16 works on cpu)",
        )
    _check_report_to(config)
    # Transformers collects these when the config is built but raises them only when training starts, weights loaded.
    mismatches = getattr(getattr(config, "hf_deepspeed_config", None), "mismatches", None)
    if mismatches:
        raise deepspeed_mismatch_error(config, mismatches)
    temperature = config.temperature
    if not math.isfinite(temperature):
        raise bad_value("temperature", temperature, "must be finite", "set a temperature in [0.05, 20], e.g. 2.0")
    low, high = TEMPERATURE_RANGE
    if not low <= temperature <= high:
        logger.warning(
            f"temperature={temperature} is outside [{low}, {high}]: the softened distributions are nearly "
            f"{'one-hot' if temperature < low else 'uniform'}, so the divergence says little about the teacher"
        )
