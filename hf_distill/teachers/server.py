"""A teacher behind a stock vLLM OpenAI-compatible server (`use_teacher_server`): each micro-batch's token rows are
sent to it (`server_client.TeacherServerClient`), and its top-k comes back laid out as a teacher cache's, so the same
sparse loss takes it, fused or dense."""

from typing import Any

import torch

from ..losses import TopKTeacher
from ..user_errors import UserInputError
from .protocol import TOP_K_LOG_PROBS
from .server_client import TeacherServerClient

# Rows per request and requests in flight: a micro-batch of 16 rows is one request, larger ones are split and sent
# concurrently over the client's connection pool.
ROWS_PER_REQUEST = 16
MAX_CONCURRENCY = 4


class ServerTeacher:
    """`hf_distill.teachers.protocol.Teacher` served at `url`: its top-`top_k` next-token log-probabilities of every
    position of each batch, training and evaluation (the server scores any tokens, generated ones too).

    Args:
        url: the server (`teacher_model_server_url`).
        top_k: log-probabilities per position (`teacher_server_top_k`).
        mode: how the top-k becomes a distribution (`teacher_cache_mode`).
        timeout: seconds per request (`teacher_server_timeout`).
    """

    kind = "server"
    gives = frozenset({TOP_K_LOG_PROBS})
    fused = True
    distills = True
    evaluates = True
    models = []
    writer = None

    def __init__(self, url: str, top_k: int, mode: str, timeout: float):
        self.url, self.top_k, self.mode = url, top_k, mode
        self.client = TeacherServerClient(
            url, top_k, timeout=timeout, max_concurrency=MAX_CONCURRENCY, rows_per_request=ROWS_PER_REQUEST
        )
        self.model: str | None = None

    def check(self, vocab_size: int, tokenizer=None) -> None:
        """Before any training compute: the server answers, serves the student's vocabulary (`vocab_size` logits,
        and `tokenizer`'s text when given) and `top_k` is within its `--max-logprobs`; each problem in one line."""
        self.model = self.client.check_server(vocab_size, tokenizer)["model"]

    def side(self, batch: dict[str, Any], model_inputs: dict[str, Any], fused: bool, training: bool) -> TopKTeacher:
        input_ids = batch["input_ids"]
        segments = sequence_segments(input_ids, batch.get("attention_mask"), batch.get("position_ids"))
        rows = [input_ids[b, start:end].tolist() for b, start, end in segments]
        # All of the batch's rows or one error: a step never trains on a partial answer.
        answers = self.client.prompt_top_k(rows)
        shape = (input_ids.shape[0], input_ids.shape[1] - 1, self.top_k)
        # Positions that score nothing (padding, a packed sequence's last token) hold zeros, as in a cache's batch:
        # they are no target, and the loss never reads them.
        ids = torch.zeros(shape, dtype=torch.long)
        logprobs = torch.zeros(shape, dtype=torch.float32)
        scored = torch.zeros(shape[:2], dtype=torch.bool)
        for (b, start, end), (row_ids, row_logprobs) in zip(segments, answers):
            ids[b, start : end - 1], logprobs[b, start : end - 1] = row_ids, row_logprobs
            scored[b, start : end - 1] = True
        # The mass outside the top-k, as `cache_builder.teacher_topk` computes it (the clamp keeps rounding from
        # turning it into NaN); zero where nothing was scored.
        tail = torch.log1p(-logprobs.exp().sum(-1).clamp(max=1.0)).where(scored, 0.0)
        device = input_ids.device
        return TopKTeacher(ids.to(device), logprobs.to(device), tail.to(device), self.mode)

    def names(self) -> list[str]:
        return [f"{self.model} (served at {self.url})" if self.model else f"the teacher server at {self.url}"]

    def close(self) -> None:
        self.client.close()


def sequence_segments(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None
) -> list[tuple[int, int, int]]:
    """`(row, start, end)` of each sequence of 2 or more tokens in a batch: a row's attended tokens (one run of them;
    padding on either side), split where `position_ids` restart at 0 (a padding-free packed row holds several
    sequences, each of which the teacher reads alone)."""
    segments = []
    for b in range(input_ids.shape[0]):
        attended = range(input_ids.shape[1])
        if attention_mask is not None:
            kept = attention_mask[b].nonzero().flatten().tolist()
            if kept and kept != list(range(kept[0], kept[-1] + 1)):
                raise UserInputError(
                    "a batch row with holes in its attention mask",
                    f"row {b} of a batch for the teacher server",
                    "the server reads each sequence as one run of tokens",
                    "pad on the left or the right only (DistillDataCollator does)",
                )
            attended = range(kept[0], kept[-1] + 1) if kept else range(0)
        starts = [i for i in attended if i == attended.start or (position_ids is not None and position_ids[b, i] == 0)]
        for start, end in zip(starts, [*starts[1:], attended.stop]):
            if end - start >= 2:
                segments.append((b, start, end))
    return segments
