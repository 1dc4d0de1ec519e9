"""The demo's optimizer steps at 1 and 2 torch threads and at hf-distill's own choice, on a quiet CPU and beside a
busy process, interleaved.

    python benchmarks/cpu_threads.py [--max_steps 30] [--repeats 2] [--settle_s 20]
        [--output benchmarks/results/cpu_threads_cpu.md]

Each run is `hf-distill train recipes/demo/distill.yaml --max_steps N --eval_strategy no --save_strategy no` in its
own process, with `OMP_NUM_THREADS` set to 1 or 2, or unset (`auto`: hf-distill gives the run the cores the 1-minute
load average leaves free, `hf_distill/cpu_threads.py`); its time is the Trainer's `train_runtime` (the optimizer
steps, without start-up, loading and saving). `loaded` runs beside one busy process this script starts (a Python spin
loop, one core), started `--settle_s` seconds before the loaded runs of a repeat so that the load average sees it;
the quiet runs have no such process, but the machine's other work still runs: the table records the load average at
the start of each run. Within a repeat the order of the thread settings rotates. Prints a Markdown table of the
median times and their ratio to 1 thread under the same condition, and writes it to `--output`.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "recipes", "demo", "distill.yaml")
SETTINGS = ("1", "2", "auto")
SPIN = "while True:\n    pass\n"


def train_once(threads: str, max_steps: int, output_dir: str) -> tuple[float, float, str]:
    """Seconds of the run's optimizer steps, the 1-minute load average at its start, and the threads it used."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if threads != "auto":
        env["OMP_NUM_THREADS"] = threads
    load = os.getloadavg()[0]
    command = [sys.executable, "-m", "hf_distill.cli", "train", RECIPE, "--max_steps", str(max_steps)]
    command += ["--eval_strategy", "no", "--save_strategy", "no", "--disable_tqdm", "true", "--output_dir", output_dir]
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"error: {' '.join(command)} failed:\n{result.stderr[-3000:]}")
    with open(os.path.join(output_dir, "train_results.json")) as f:
        seconds = json.load(f)["train_runtime"]
    if threads == "auto":
        chosen = re.search(r"using (\d+) torch threads per process", result.stderr)
        threads = f"auto: {chosen[1] if chosen else len(os.sched_getaffinity(0))}"
    return seconds, load, threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--max_steps", type=int, default=30, help="optimizer steps per run (default: 30)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each setting and condition (default: 2)")
    parser.add_argument("--settle_s", type=float, default=20.0, help="busy process head start (default: 20)")
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "cpu_threads_cpu.md"))
    opts = parser.parse_args()
    runs = {(condition, s): [] for condition in ("quiet", "loaded") for s in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(opts.repeats):
            order = SETTINGS[repeat % 3 :] + SETTINGS[: repeat % 3]
            for condition in ("quiet", "loaded"):
                spinner = subprocess.Popen([sys.executable, "-c", SPIN]) if condition == "loaded" else None
                try:
                    if spinner is not None:
                        time.sleep(opts.settle_s)
                    for setting in order:
                        output_dir = os.path.join(tmp, f"{repeat}-{condition}-{setting}")
                        seconds, load, used = train_once(setting, opts.max_steps, output_dir)
                        runs[condition, setting].append((seconds, load, used))
                        print(f"repeat {repeat + 1}, {condition}, threads {used}: {seconds:.1f} s (load {load:.1f})")
                finally:
                    if spinner is not None:
                        spinner.kill()
                        spinner.wait()
    cores = len(os.sched_getaffinity(0))
    lines = [
        f"# benchmarks/cpu_threads.py: {opts.max_steps} demo steps, {cores} CPU cores, {opts.repeats} runs each",
        "",
        f"`python benchmarks/cpu_threads.py --max_steps {opts.max_steps} --repeats {opts.repeats} --settle_s "
        f"{opts.settle_s:g}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. loaded: beside one busy process "
        "(a Python spin loop) started by the script; quiet: without it (the machine's other work still ran: see the "
        "load average).",
        "",
        "| condition | torch threads | median s | runs (s) | / 1 thread, same condition | load average at start |",
        "|---|---|---:|---|---:|---|",
    ]
    for (condition, _), results in runs.items():
        median = statistics.median(r[0] for r in results)
        one = statistics.median(r[0] for r in runs[condition, "1"])
        used = ", ".join(sorted({r[2] for r in results}))
        times = ", ".join(f"{r[0]:.1f}" for r in results)
        loads = ", ".join(f"{r[1]:.1f}" for r in results)
        lines.append(f"| {condition} | {used} | {median:.1f} | {times} | {median / one:.2f} | {loads} |")
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    with open(opts.output, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
