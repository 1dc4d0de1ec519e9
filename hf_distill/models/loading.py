"""The one place that loads a run's tokenizer, student and teachers, and checks from their files that they fit.

The pipeline (`build_trainer`), the cache builder (`hf-distill cache-teacher`) and `DistillTrainer` (given a teacher
by path) all load through here, so a teacher is loaded with the same arguments whoever loads it.
"""

import logging

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

from ..arguments.script_arguments import ModelArguments
from ..config import DistillConfig
from ..user_errors import UserInputError
from .causal_lm import (
    check_same_tokenizer,
    check_vocab_sizes,
    check_weight_files,
    load_causal_lm,
    load_causal_lm_config,
    parse_init_kwargs,
)

logger = logging.getLogger(__name__)


def load_tokenizer(model_args: ModelArguments, config: DistillConfig):
    """The tokenizer shared by student and teachers: `tokenizer_name_or_path`, else the student's (with
    `student_init: from_config`, the first teacher's: a bare model config ships no tokenizer); pads with EOS if it
    has no pad token."""
    name = model_args.tokenizer_name_or_path
    if name is None:
        teachers = config.teacher_paths
        name = teachers[0] if teachers and model_args.student_init == "from_config" else None
        name = name or model_args.model_name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=model_args.trust_remote_code)
    except (OSError, ValueError) as err:
        raise UserInputError(
            "cannot load a tokenizer", f"tokenizer_name_or_path={name!r}", str(err), "fix the path or hub id"
        ) from None
    if config.generates and tokenizer.eos_token is None:
        setting = config.generation_setting
        raise UserInputError(
            "tokenizer without an end-of-sequence token",
            f"tokenizer_name_or_path={name!r}, {setting}",
            f"{setting} generates completions, which stop at the eos_token this tokenizer has none of",
            "use a tokenizer with an end-of-sequence token",
        )
    if config.uses_cross_tokenizer:
        check_offsets(tokenizer, f"tokenizer_name_or_path={name!r}", config.cross_tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_offsets(tokenizer, role: str, mode: str) -> None:
    """Cross-tokenizer alignment reads character offsets, which only fast tokenizers give."""
    if not tokenizer.is_fast:
        raise UserInputError(
            "slow tokenizer",
            role,
            f"a {type(tokenizer).__name__} gives no character offsets, which cross_tokenizer={mode!r} aligns tokens "
            "by",
            "use a fast tokenizer (a tokenizer.json)",
        )


def load_teacher_tokenizer(config: DistillConfig, model_args: ModelArguments | None = None):
    """The teacher's own tokenizer, for `cross_tokenizer`: `teacher_tokenizer_name_or_path`, else the teacher's
    folder; it must be fast (character offsets). Loaded with the teacher model's `trust_remote_code`
    (`teacher_init_kwargs`), once per run: the trainer and the data take this one."""
    trust_remote_code = teacher_init_kwargs(config, model_args).get("trust_remote_code", False)
    name, field_name = config.teacher_tokenizer_name_or_path, "teacher_tokenizer_name_or_path"
    if name is None:
        if not config.teacher_paths:
            raise UserInputError(
                "no teacher tokenizer",
                f"cross_tokenizer={config.cross_tokenizer!r}",
                "the teacher was given as a model, not a path, so its tokenizer is unknown",
                "set teacher_tokenizer_name_or_path",
            )
        name, field_name = config.teacher_paths[0], "teacher_model_name_or_path"
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        hint = " (or set teacher_tokenizer_name_or_path)" if field_name == "teacher_model_name_or_path" else ""
        raise UserInputError(
            "teacher tokenizer cannot be read", f"{field_name}={name!r}", str(err), f"fix the path{hint}"
        ) from None
    check_offsets(tokenizer, f"{field_name}={name!r}", config.cross_tokenizer)
    return tokenizer


def load_student(model_args: ModelArguments, config: DistillConfig) -> nn.Module:
    """The student of `model_args`: pretrained weights, or fresh ones (seeded by `config.seed`) from its config."""
    kwargs = {"dtype": model_args.dtype, "trust_remote_code": model_args.trust_remote_code}
    if model_args.attn_implementation is not None:
        kwargs["attn_implementation"] = model_args.attn_implementation
    if model_args.student_init == "pretrained":
        model = load_causal_lm(model_args.model_name_or_path, "model_name_or_path", **kwargs)
        return with_lora(model, model_args) if model_args.use_peft else model
    model_config = load_causal_lm_config(
        model_args.model_name_or_path, "model_name_or_path", kwargs["trust_remote_code"]
    )
    # Fresh weights must not depend on what ran before: seed right before initialising them.
    set_seed(config.seed)
    dtype = kwargs.pop("dtype")
    model = AutoModelForCausalLM.from_config(model_config, **kwargs)
    return model.to(getattr(torch, dtype)) if dtype != "auto" else model


def with_lora(model: nn.Module, model_args: ModelArguments) -> nn.Module:
    """`model` with a LoRA adapter of `model_args`' `lora_*` fields (TRL's `get_peft_config`), only the adapter and
    `lora_modules_to_save` trainable."""
    from peft import LoraConfig, get_peft_model
    from peft.utils.error import NoMatchingPeftModuleError

    target_modules = model_args.lora_target_modules
    if target_modules == ["all-linear"]:
        # PEFT reads the shorthand only as a string; in a list it would look for a module named "all-linear".
        target_modules = "all-linear"
    config = LoraConfig(
        task_type=model_args.lora_task_type,
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=target_modules,
        modules_to_save=model_args.lora_modules_to_save,
        use_rslora=model_args.use_rslora,
        use_dora=model_args.use_dora,
        bias="none",
    )
    try:
        return get_peft_model(model, config)
    except NoMatchingPeftModuleError as err:
        raise UserInputError(
            "LoRA target modules not found",
            f"lora_target_modules={model_args.lora_target_modules}",
            str(err),
            "name modules of the student (e.g. q_proj, v_proj), or all-linear",
        ) from None


def teacher_init_kwargs(config: DistillConfig, model_args: ModelArguments | None = None) -> dict:
    """Keyword arguments for loading a teacher by path; the one rule, whoever loads it:

    `config.teacher_model_init_kwargs`, then, for the keys it does not set and when the student's `model_args` are
    known (the pipeline and the cache builder), the student's `attn_implementation` (when set) and
    `trust_remote_code`. `dtype` is never taken from the student. `DistillTrainer`, given only its `args`, has no
    `model_args`: a drop-in script puts the teacher's `attn_implementation` or `trust_remote_code` in
    `teacher_model_init_kwargs`.
    """
    kwargs = parse_init_kwargs(config.teacher_model_init_kwargs, "teacher_model_init_kwargs")
    if model_args is not None:
        if model_args.attn_implementation is not None:
            kwargs.setdefault("attn_implementation", model_args.attn_implementation)
        kwargs.setdefault("trust_remote_code", model_args.trust_remote_code)
    return kwargs


def load_teachers(
    config: DistillConfig,
    model_args: ModelArguments | None = None,
    teacher_model: nn.Module | str | list[nn.Module | str] | tuple | None = None,
) -> list[nn.Module]:
    """The teachers, one per ensemble member: `teacher_model` (a model, a path, or a list of them), else
    `config.teacher_model_name_or_path`. Models are kept as given; paths are loaded with `teacher_init_kwargs`."""
    given = teacher_model if teacher_model is not None else config.teacher_model_name_or_path
    if given is None:
        members = []
    else:
        members = list(given) if isinstance(given, list | tuple) else [given]
    if not members:
        raise UserInputError(
            f"alpha={config.alpha} needs a teacher: pass teacher_model or set teacher_model_name_or_path "
            "(or set alpha=1.0 for plain fine-tuning)"
        )
    # Parsed only when a path is loaded: teachers passed as models ignore teacher_model_init_kwargs.
    kwargs = teacher_init_kwargs(config, model_args) if any(isinstance(m, str) for m in members) else {}
    return [load_causal_lm(m, "teacher_model_name_or_path", **kwargs) if isinstance(m, str) else m for m in members]


def check_models_fit(
    model_args: ModelArguments,
    config: DistillConfig,
    tokenizer,
    teacher_tokenizer=None,
    cache_top_k: int | None = None,
) -> None:
    """Model, tokenizer and vocabulary checks from config and tokenizer files, then the weight files' headers (no
    tensor is read), before any weight is loaded. `teacher_tokenizer` is the run's (`cross_tokenizer`; loaded here
    when not given), `cache_top_k` the top-k of its teacher cache's manifest."""
    trust = model_args.trust_remote_code
    student = load_causal_lm_config(model_args.model_name_or_path, "model_name_or_path", trust)
    models = [(model_args.model_name_or_path, "model_name_or_path", student)]
    if model_args.student_init != "pretrained":
        models = []  # fresh weights: the folder holds a config only
    # Before the vocabulary checks, whose message would not name the cache.
    if cache_top_k is not None:
        top_k, vocab = cache_top_k, student.get_text_config().vocab_size
        if top_k > vocab:
            raise UserInputError(
                "teacher cache wider than the student's vocabulary",
                f"teacher_cache_dir={config.teacher_cache_dir!r}",
                f"it holds top_k={top_k} tokens per target, the student has {vocab}",
                f"rebuild it with hf-distill cache-teacher --top_k {vocab} or less",
            )
    # Every ensemble member is checked against the student, and so shares its vocabulary with the others.
    for teacher_path in config.teacher_paths if config.teacher_source != "none" else []:
        teacher = load_causal_lm_config(teacher_path, "teacher_model_name_or_path", trust)
        models.append((teacher_path, "teacher_model_name_or_path", teacher))
        if config.uses_cross_tokenizer:
            teacher_tokenizer = teacher_tokenizer or load_teacher_tokenizer(config, model_args)
            check_cross_tokenizer_fit(config, tokenizer, teacher_tokenizer, teacher)
            continue
        try:
            teacher_tokenizer = AutoTokenizer.from_pretrained(teacher_path, trust_remote_code=trust)
        except (OSError, ValueError):
            teacher_tokenizer = None  # a teacher folder without tokenizer files: nothing to compare
        if teacher_tokenizer is not None:
            check_same_tokenizer(tokenizer, teacher_tokenizer)
        check_vocab_sizes(student.get_text_config().vocab_size, teacher.get_text_config().vocab_size, len(tokenizer))
    # Weight files last: a model that cannot fit at all is told so first.
    for path, role, model_config in models:
        check_weight_files(path, role, model_config)


def check_cross_tokenizer_fit(config: DistillConfig, tokenizer, teacher_tokenizer, teacher_config) -> None:
    """The teacher has a logit for each token of its tokenizer; a teacher tokenizer identical to the student's is
    told (the direct, same-vocabulary path is `cross_tokenizer: off`)."""
    width = teacher_config.get_text_config().vocab_size
    if width < len(teacher_tokenizer):
        raise UserInputError(
            "vocabulary mismatch",
            "teacher_tokenizer_name_or_path",
            f"the teacher's tokenizer has {len(teacher_tokenizer)} tokens but the teacher has {width} logits",
            "use the teacher's own tokenizer",
        )
    if teacher_tokenizer.get_vocab() == tokenizer.get_vocab():
        logger.warning(
            f"cross_tokenizer={config.cross_tokenizer!r}, but teacher and student share one tokenizer: 'aligned' then "
            "computes the same-vocabulary divergence, span by span and without the chunked loss; cross_tokenizer: off "
            "is the direct path"
        )
