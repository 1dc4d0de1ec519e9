"""What a run needs beside `DistillConfig`: the student model and the data. Parsed together from one recipe."""

import importlib.util
from dataclasses import dataclass, field, fields

from ..user_errors import UserInputError, bad_value
from .field_docs import document_fields

STUDENT_INITS = ("pretrained", "from_config")
DATASET_FORMATS = ("auto", "text", "prompt_completion", "messages", "prompt")
DTYPES = ("auto", "float32", "bfloat16", "float16")
LORA_TASK_TYPES = ("CAUSAL_LM",)


@document_fields
@dataclass
class ModelArguments:
    r"""
    The student model and its tokenizer.

    Parameters:
        model_name_or_path (`str`):
            Student: hub id or local folder of a causal LM, or, with `student_init: from_config`, of a model config.
        student_init (`str`, *optional*, defaults to `"pretrained"`):
            `pretrained` loads the student's weights; `from_config` builds the student from its config with fresh,
            randomly initialised weights (seeded by `seed`).
        tokenizer_name_or_path (`str`, *optional*, defaults to `None`):
            Tokenizer shared by student and teacher. Defaults to `model_name_or_path` (or, with `from_config`, to the
            teacher's).
        dtype (`str`, *optional*, defaults to `"auto"`):
            Dtype of the student's weights: `auto`, `float32`, `bfloat16` or `float16`.
        attn_implementation (`str`, *optional*, defaults to `None`):
            Attention kernel of student and teacher, e.g. `sdpa`, `eager` or `flash_attention_2`; `None` lets
            transformers choose.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Allow models and tokenizers that ship their own code.
        use_peft (`bool`, *optional*, defaults to `False`):
            Train a LoRA adapter on the pretrained student instead of all its weights (`peft.get_peft_model` with the
            `lora_*` fields below, TRL `ModelConfig`'s names and defaults; `pip install hf_distill[peft]`). Only the
            adapter (and `lora_modules_to_save`) trains; the run saves a PEFT adapter, which
            `peft.PeftModel.from_pretrained` loads over the base model, and its model card keeps `library_name: peft`.
            Needs `student_init: pretrained` and a single-round recipe. The `lora_*`, `use_rslora` and `use_dora`
            fields are refused without it, since nothing would read them.
        lora_r (`int`, *optional*, defaults to `16`):
            Rank of the LoRA update matrices, >= 1.
        lora_alpha (`int`, *optional*, defaults to `32`):
            LoRA scaling numerator: the update is scaled by `lora_alpha / lora_r` (by `lora_alpha / sqrt(lora_r)` with
            `use_rslora`).
        lora_dropout (`float`, *optional*, defaults to `0.05`):
            Dropout on the LoRA input, in [0, 1). A LoRA on the LM head with dropout is not one matrix: training then
            takes the dense loss (see `loss_chunk_size`).
        lora_target_modules (`list[str]`, *optional*, defaults to `None`):
            Names of the modules that get a LoRA, e.g. `[q_proj, v_proj]`, or `all-linear`; `None` takes PEFT's
            default for the architecture.
        lora_modules_to_save (`list[str]`, *optional*, defaults to `None`):
            Modules trained in full beside the adapter and saved with it, e.g. `[lm_head]`.
        lora_task_type (`str`, *optional*, defaults to `"CAUSAL_LM"`):
            PEFT task type; a distilled student is a causal LM, so `CAUSAL_LM` is the only choice (kept so that a TRL
            recipe setting it reads unchanged).
        use_rslora (`bool`, *optional*, defaults to `False`):
            Rank-stabilised LoRA: scale the update by `lora_alpha / sqrt(lora_r)`.
        use_dora (`bool`, *optional*, defaults to `False`):
            Weight-decomposed LoRA (DoRA): a learned magnitude per output beside the LoRA direction.
    """

    model_name_or_path: str
    student_init: str = field(default="pretrained", metadata={"choices": list(STUDENT_INITS)})
    tokenizer_name_or_path: str | None = None
    dtype: str = field(default="auto", metadata={"choices": list(DTYPES)})
    attn_implementation: str | None = None
    trust_remote_code: bool = False
    use_peft: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] | None = None
    lora_modules_to_save: list[str] | None = None
    lora_task_type: str = field(default="CAUSAL_LM", metadata={"choices": list(LORA_TASK_TYPES)})
    use_rslora: bool = False
    use_dora: bool = False

    def __post_init__(self):
        if not self.use_peft:
            # Compared with the defaults: a LoRA setting without use_peft would be ignored without a word.
            changed = [
                f"{f.name}={getattr(self, f.name)!r}" for f in _LORA_FIELDS if getattr(self, f.name) != f.default
            ]
            if changed:
                raise UserInputError(
                    "LoRA setting without use_peft",
                    ", ".join(changed),
                    "use_peft is false, so it would be ignored",
                    "set use_peft: true, or remove the setting",
                )
            return
        if importlib.util.find_spec("peft") is None:
            raise UserInputError(
                "peft is not installed", "use_peft=True", "a LoRA student needs it", "pip install 'hf_distill[peft]'"
            )
        if self.student_init != "pretrained":
            raise UserInputError(
                "LoRA over random weights",
                f"use_peft=True, student_init={self.student_init!r}",
                "use_peft trains an adapter over the student's weights, which from_config makes random",
                "use student_init: pretrained",
            )
        if self.lora_r < 1:
            raise bad_value("lora_r", self.lora_r, "must be >= 1", "set a LoRA rank of 1 or more")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise bad_value("lora_dropout", self.lora_dropout, "must be in [0, 1)", "set a dropout in [0, 1)")


_LORA_FIELDS = [
    f for f in fields(ModelArguments) if f.name.startswith("lora_") or f.name in ("use_rslora", "use_dora")
]


@document_fields
@dataclass
class DataArguments:
    r"""
    The training (and evaluation) data.

    Parameters:
        dataset_name (`str`):
            Hub dataset id, a local folder (split files named `train.jsonl`, `eval.parquet`, ...; or a dataset saved
            with `save_to_disk`) or a single local json/jsonl/parquet/csv/txt file (used as the train split).
        dataset_config (`str`, *optional*, defaults to `None`):
            Configuration name of a hub dataset.
        dataset_train_split (`str`, *optional*, defaults to `"train"`):
            Split to train on.
        dataset_eval_split (`str`, *optional*, defaults to `None`):
            Split to evaluate on; `None` means no evaluation.
        dataset_format (`str`, *optional*, defaults to `"auto"`):
            `text` (loss on every token), `prompt_completion` (loss on the completion only), `messages` (chat
            template; loss on assistant turns only; a conversation that ends with a user turn is a prompt), `prompt`
            (prompts only, for `lmbda: 1.0`, where the student writes every completion), or `auto` to pick by the
            columns present.
        max_length (`int`, *optional*, defaults to `1024`):
            Examples longer than this many tokens are truncated (and counted in a warning).
        dataset_num_proc (`int`, *optional*, defaults to `None`):
            Processes for tokenization (`datasets.map`); `None` tokenizes in the main process.
        max_train_samples (`int`, *optional*, defaults to `None`):
            Keep only the first N training examples (quick runs).
        max_eval_samples (`int`, *optional*, defaults to `None`):
            Keep only the first N evaluation examples.
    """

    dataset_name: str
    dataset_config: str | None = None
    dataset_train_split: str = "train"
    dataset_eval_split: str | None = None
    dataset_format: str = field(default="auto", metadata={"choices": list(DATASET_FORMATS)})
    max_length: int = 1024
    dataset_num_proc: int | None = None
    max_train_samples: int | None = None
    max_eval_samples: int | None = None

    def __post_init__(self):
        if self.max_length < 2:
            raise bad_value("max_length", self.max_length, "must be >= 2", "set max_length to 2 or more")
        for name in ("dataset_num_proc", "max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise bad_value(name, value, "must be >= 1 or None", f"set {name} to 1 or more, or unset it")
