"""Teacher servers for the tests, on 127.0.0.1 only: the stock vLLM server of the demo teacher (`start_vllm_server`,
the `server` fixture of tests/teachers/conftest.py), and a stdlib HTTP server that answers as vLLM's
`/v1/completions` does, from a transformers model in this process (`ModelServer`: no vLLM needed), which can be made
to close every connection (a killed server) or to answer late."""

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import torch
import urllib3
from testing_utils import REPO_ROOT

DEMO = os.path.join(REPO_ROOT, "recipes", "demo")
SERVER_START_SECONDS = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VllmServer:
    """`python -m vllm.entrypoints.openai.api_server` of the demo teacher on a free port (K up to 20, 128 tokens),
    its output in `log_path`; `url` once `/health` answers, within SERVER_START_SECONDS."""

    def __init__(self, log_path, port: int | None = None):
        self.port, self.log_path = port or free_port(), log_path
        self.url = f"http://127.0.0.1:{self.port}"
        command = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            os.path.join(DEMO, "teacher"),
        ]
        command += ["--tokenizer", os.path.join(DEMO, "tokenizer"), "--dtype", "float32", "--max-model-len", "128"]
        command += ["--max-logprobs", "20", "--host", "127.0.0.1", "--port", str(self.port), "--enforce-eager"]
        env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1")
        with open(log_path, "w") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def wait(self) -> str:
        http = urllib3.PoolManager(retries=False, timeout=2)
        deadline = time.monotonic() + SERVER_START_SECONDS
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the vLLM server exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the vLLM server was not up in {SERVER_START_SECONDS} s:\n{self.log()}")
            try:
                if http.request("GET", self.url + "/health").status == 200:
                    return self.url
            except urllib3.exceptions.HTTPError:
                pass
            time.sleep(0.5)

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()[-3000:]

    def stop(self) -> None:
        """Its process group (the API server and its engine): SIGTERM, then SIGKILL after 30 s."""
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


class ModelServer:
    """vLLM's `GET /v1/models` and `POST /v1/completions` with `prompt_logprobs`, answered from `model`'s
    log-softmax in float32, on a free 127.0.0.1 port. After `answer_posts` POSTs (None: no limit) it closes every
    connection without an answer, as a killed server does; `delay` seconds before each answer."""

    def __init__(self, model, max_model_len: int = 128, port: int = 0):
        self.model, self.max_model_len = model.eval(), max_model_len
        self.answer_posts: int | None = None
        self.delay = 0.0
        self.posts = 0
        self.lock = threading.Lock()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self._answer({"data": [{"id": "model-server", "max_model_len": owner.max_model_len}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with owner.lock:
                    owner.posts += 1
                    dead = owner.answer_posts is not None and owner.posts > owner.answer_posts
                if dead:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                time.sleep(owner.delay)
                self._answer(
                    {
                        "choices": [
                            owner.choice(i, row, body["prompt_logprobs"]) for i, row in enumerate(body["prompt"])
                        ]
                    }
                )

            def _answer(self, payload):
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True  # restarted on the port of a stopped one

            def handle_error(self, request, client_address):
                pass  # a client that left

        self.server = Server(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def choice(self, index: int, row: list[int], k: int) -> dict:
        with torch.no_grad(), self.lock:
            log_p = torch.log_softmax(self.model(torch.tensor([row])).logits[0, :-1].float(), -1)
        values, ids = log_p.topk(k, dim=-1)
        positions = [None]
        for j, (top_ids, top_values) in enumerate(zip(ids.tolist(), values.tolist())):
            # As vLLM's: the top k by rank, and the prompt's own next token with its rank.
            token = row[j + 1]
            entry = {
                str(token): {"logprob": log_p[j, token].item(), "rank": int((log_p[j] > log_p[j, token]).sum()) + 1}
            }
            entry.update({str(t): {"logprob": v, "rank": r + 1} for r, (t, v) in enumerate(zip(top_ids, top_values))})
            positions.append(entry)
        return {"index": index, "prompt_token_ids": row, "prompt_logprobs": positions}

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
