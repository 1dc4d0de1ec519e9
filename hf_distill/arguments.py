"""What a run needs beside `DistillConfig`: the student model and the data. Parsed together from one recipe."""

from dataclasses import dataclass, field

from .field_docs import document_fields
from .user_errors import bad_value

STUDENT_INITS = ("pretrained", "from_config")
DATASET_FORMATS = ("auto", "text", "prompt_completion", "messages", "prompt")
DTYPES = ("auto", "float32", "bfloat16", "float16")


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
    """

    model_name_or_path: str
    student_init: str = field(default="pretrained", metadata={"choices": list(STUDENT_INITS)})
    tokenizer_name_or_path: str | None = None
    dtype: str = field(default="auto", metadata={"choices": list(DTYPES)})
    attn_implementation: str | None = None
    trust_remote_code: bool = False


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
