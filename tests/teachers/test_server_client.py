"""TeacherServerClient against a stock vLLM server of the demo teacher, and against servers that fail.

The stock-server tests need vLLM (`bash scripts/install_vllm.sh`, `python -m pytest -m vllm`) and skip without it;
retries and refused connections are tested everywhere, on 127.0.0.1 only.
"""

import http.server
import json
import os
import threading
import time

import pytest
import torch
from teacher_servers import free_port
from testing_utils import REPO_ROOT as ROOT

from hf_distill.teachers import server_client
from hf_distill.user_errors import UserInputError

DEMO = os.path.join(ROOT, "recipes", "demo")


TeacherServerClient = server_client.TeacherServerClient


# --- Failing servers: no vLLM needed ---------------------------------------------------------------------------------


def test_refused_connection_is_retried_then_one_line():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    start = time.monotonic()
    with TeacherServerClient(url, top_k=4, timeout=2, retries=2, backoff=0.05) as client:
        with pytest.raises(UserInputError) as info:
            client.prompt_top_k([[1, 2, 3]])
    line = str(info.value)
    # Waits of 0.05 and 0.1 s between 3 tries; refused connections fail at once.
    assert time.monotonic() - start < 5
    assert line.startswith(f"the teacher server did not answer ({url}/v1/completions): 3 tries in ")
    assert "teacher_model_server_url" in line and "\n" not in line


class FlakyServer(http.server.BaseHTTPRequestHandler):
    """Answers 503 to the first `failures` requests, then a vLLM-shaped answer for rows of 3 tokens, K = 1."""

    failures = 0
    # The first `slow` requests (after the failures) answer only after `delay` seconds.
    slow = 0
    delay = 0.0
    seen = 0

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen += 1
        if type(self).seen <= type(self).failures:
            self._answer(503, {"error": {"message": "engine is starting"}})
            return
        if type(self).seen <= type(self).failures + type(self).slow:
            time.sleep(type(self).delay)
        choices = [
            {
                "index": i,
                "prompt_token_ids": row,
                "prompt_logprobs": [None] + [{str(t): {"logprob": -0.5, "rank": 1}} for t in row[1:]],
            }
            for i, row in enumerate(body["prompt"])
        ]
        self._answer(200, {"choices": choices})

    def _answer(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # the answer to a client that timed out and left: a broken pipe, expected


@pytest.fixture
def flaky():
    FlakyServer.seen, FlakyServer.failures, FlakyServer.slow, FlakyServer.delay = 0, 0, 0, 0.0
    server = QuietServer(("127.0.0.1", 0), FlakyServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_5xx_is_retried_with_backoff(flaky):
    FlakyServer.failures = 2
    with TeacherServerClient(flaky, top_k=1, retries=2, backoff=0.05) as client:
        ((ids, logprobs),) = client.prompt_top_k([[7, 8, 9]])
    assert FlakyServer.seen == 3
    assert ids.tolist() == [[8], [9]] and logprobs.tolist() == [[-0.5], [-0.5]]


def test_a_timed_out_request_is_sent_again(flaky):
    FlakyServer.slow, FlakyServer.delay = 1, 2.0
    start = time.monotonic()
    with TeacherServerClient(flaky, top_k=1, timeout=0.5, retries=1, backoff=0.05) as client:
        ((ids, _),) = client.prompt_top_k([[7, 8, 9]])
    assert FlakyServer.seen == 2 and ids.tolist() == [[8], [9]]
    assert time.monotonic() - start < 1.9  # the retry did not wait for the slow answer


def test_5xx_after_every_retry_is_one_line_and_no_answer(flaky):
    FlakyServer.failures = 100
    with TeacherServerClient(flaky, top_k=1, retries=1, backoff=0.05, rows_per_request=1) as client:
        with pytest.raises(UserInputError) as info:
            client.prompt_top_k([[7, 8, 9], [1, 2]])
    assert "2 tries" in str(info.value) and "HTTP 503: engine is starting" in str(info.value)


# --- The stock vLLM server -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(os.path.join(DEMO, "tokenizer"))
    model = AutoModelForCausalLM.from_pretrained(os.path.join(DEMO, "teacher"), dtype=torch.float32).eval()
    with open(os.path.join(DEMO, "data", "eval.jsonl")) as f:
        conversations = [json.loads(line)["messages"] for line in f][:32]
    rows = [list(tokenizer.apply_chat_template(m, tokenize=True, return_dict=False))[:127] for m in conversations]
    # The longest row the server takes: 127 tokens and the one it generates.
    rows[0] = (rows[0] * 127)[:127]
    return model, tokenizer, rows


@pytest.mark.vllm
def test_top_k_per_position_equals_transformers(server, demo):
    model, tokenizer, rows = demo
    with TeacherServerClient(server, top_k=20, rows_per_request=8, max_concurrency=2) as client:
        info = client.check_server(model.config.vocab_size, tokenizer)
        assert info == {"model": os.path.join(DEMO, "teacher"), "max_model_len": 128}
        start = time.monotonic()
        answers = client.prompt_top_k(rows)
        seconds = time.monotonic() - start
    assert len(answers) == len(rows)
    worst = 0.0
    for row, (ids, logprobs) in zip(rows, answers):
        with torch.no_grad():
            ref = torch.log_softmax(model(torch.tensor([row])).logits[0, :-1].float(), -1).topk(20)
        assert ids.shape == logprobs.shape == (len(row) - 1, 20) and ids.dtype == torch.long
        assert torch.equal(ids, ref.indices), "top-20 ids differ from transformers'"
        worst = max(worst, (logprobs - ref.values).abs().max().item())
    assert worst < 1e-4
    print(f"\n{len(rows)} rows in {seconds:.2f} s (4 requests, 2 at a time); largest log-prob difference {worst:.1e}")


@pytest.mark.vllm
def test_batched_and_concurrent_answers_are_in_row_order(server, demo):
    _, _, rows = demo
    with TeacherServerClient(server, top_k=3, rows_per_request=1, max_concurrency=4) as one_by_one:
        singles = one_by_one.prompt_top_k(rows[:6])
    with TeacherServerClient(server, top_k=3, rows_per_request=6, max_concurrency=1) as together:
        batched = together.prompt_top_k(rows[:6])
    for (a_ids, a_lp), (b_ids, b_lp) in zip(singles, batched):
        assert torch.equal(a_ids, b_ids) and torch.allclose(a_lp, b_lp, atol=1e-5)


@pytest.mark.vllm
def test_top_k_above_the_servers_max_logprobs_is_one_line(server, demo):
    model, tokenizer, _ = demo
    with TeacherServerClient(server, top_k=21) as client:
        with pytest.raises(UserInputError) as info:
            client.check_server(model.config.vocab_size, tokenizer)
    line = str(info.value)
    assert line.startswith("teacher_server_top_k is above the server's limit (teacher_server_top_k=21): ")
    assert "max allowed: 20" in line and line.endswith("--max-logprobs 21 or more, or lower teacher_server_top_k")


@pytest.mark.vllm
def test_check_server_refuses_another_vocabulary(server, demo):
    from transformers import AutoTokenizer

    model, _, rows = demo
    other = AutoTokenizer.from_pretrained(os.path.join(DEMO, "tokenizer_b"))
    with TeacherServerClient(server, top_k=5) as client:
        with pytest.raises(UserInputError, match="the teacher server's tokenizer is not the student's"):
            client.check_server(other.vocab_size, other)
        with pytest.raises(UserInputError, match="vocabulary is smaller than the student's.*out of vocabulary"):
            client.check_server(model.config.vocab_size + 1)
        with pytest.raises(UserInputError, match="vocabulary is larger than the student's .*: it returned token id"):
            client.check_server(400)


@pytest.mark.vllm
def test_a_row_longer_than_the_servers_context_is_refused_before_sending(server, demo):
    model, tokenizer, _ = demo
    with TeacherServerClient(server, top_k=5) as client:
        client.check_server(model.config.vocab_size, tokenizer)
        with pytest.raises(UserInputError, match="128 tokens, and the server's max_model_len is 128"):
            client.prompt_top_k([[5] * 128])
