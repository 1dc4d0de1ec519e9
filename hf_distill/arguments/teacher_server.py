"""`TeacherServerArguments`: the fields of a teacher behind a stock vLLM server, a dataclass that `DistillConfig`
inherits (its own module so that `config.py` stays short; the names are TRL's where TRL has one)."""

from dataclasses import dataclass, field

from .field_docs import document_fields
from .field_rules import ReadWhen, collect_rules

# Read by every field below but the switch itself.
_READ_WITH_SERVER = ReadWhen(
    "use_teacher_server",
    "use_teacher_server: true",
    {"use_teacher_server": True, "teacher_model_server_url": "http://127.0.0.1:8000"},
    why="it is read with use_teacher_server: true only",
)


@document_fields
@collect_rules
@dataclass
class TeacherServerArguments:
    r"""
    The teacher behind a stock vLLM OpenAI-compatible server (`docs/teacher_server.md`).

    Parameters:
        > Parameters that control a teacher behind a server

        use_teacher_server (`bool`, *optional*, defaults to `False`):
            Distil from the teacher that a stock vLLM OpenAI-compatible server at `teacher_model_server_url` serves
            (started with the student's tokenizer and `--max-logprobs` at least `teacher_server_top_k`): each
            micro-batch's token rows, training and evaluation, on-policy completions included, are sent to it and its
            top-`teacher_server_top_k` next-token log-probabilities feed the loss as a teacher cache's do (made a
            distribution by `teacher_cache_mode`, softened by `temperature`, fused or dense). No teacher is loaded
            here: it excludes `teacher_model_name_or_path`, `teacher_cache_dir`, `cross_tokenizer` and `seq_kd`, and
            needs `alpha` < 1. The trainer checks the server (vocabulary, tokenizer, K) when it is built, before any
            training; `hf-distill check` checks the fields only and does not contact it.
        teacher_model_server_url (`str`, *optional*, defaults to `None`):
            The server, `http://HOST:PORT` (or `https://`); required with `use_teacher_server`.
        teacher_server_top_k (`int`, *optional*, defaults to `20`):
            Teacher log-probabilities per position, >= 1 and at most the server's `--max-logprobs` (checked when the
            trainer is built).
        teacher_server_timeout (`float`, *optional*, defaults to `60.0`):
            Seconds, > 0, one request may take; a request that times out, is refused or answers 429/5xx is sent again
            3 times with backoff (0.5, 1, 2 s), then training stops with one line naming the URL. No step trains on a
            partial answer.
    """

    use_teacher_server: bool = False
    teacher_model_server_url: str | None = field(default=None, metadata={"read_when": _READ_WITH_SERVER})
    teacher_server_top_k: int = field(default=20, metadata={"range": "[1, inf)", "read_when": _READ_WITH_SERVER})
    teacher_server_timeout: float = field(default=60.0, metadata={"range": "(0, inf)", "read_when": _READ_WITH_SERVER})
