"""Torch threads of CPU runs: the free cores split between a run's processes, chosen when nobody chose them."""

import logging
import os
import socket
import subprocess
import sys

import pytest
from testing_utils import SCRIPTS

from hf_distill.run import cpu_threads
from hf_distill.run.cpu_threads import oversubscription_warning, torch_threads

SCRIPTS = SCRIPTS


@pytest.mark.parametrize(
    "cores, load, local_processes, threads",
    [
        (2, 0.0, 1, 2),
        (2, 0.0, 2, 1),  # accelerate_configs/cpu_2proc.yaml on the project machine
        (8, 0.0, 2, 4),
        (16, 0.0, 3, 5),
        (2, 8.0, 2, 1),  # never 0
        (2, 1.0, 1, 1),  # the demo beside one busy process: issue 18's 13x cliff
        (2, 0.6, 1, 1),
        (2, 0.4, 1, 2),  # a quiet machine's background load costs no thread
        (8, 4.2, 1, 4),
        (8, 2.0, 2, 3),
        (4, 7.0, 1, 1),  # more load than cores: one thread
    ],
)
def test_the_free_cores_are_split_between_the_processes_of_a_run(cores, load, local_processes, threads):
    assert torch_threads(cores, load, local_processes) == threads


@pytest.mark.parametrize(
    "threads, cores, load, local_processes, advice",
    [(2, 2, 1.0, 1, 1), (2, 2, 0.6, 1, 1), (8, 8, 4.2, 1, 4), (4, 4, 7.0, 1, 1), (2, 2, 0.0, 2, 1)],
)
def test_warns_when_chosen_threads_exceed_the_free_cores(threads, cores, load, local_processes, advice):
    message = oversubscription_warning(threads, cores, load, local_processes)
    assert message is not None
    assert f"{threads} threads on {cores} CPU cores" in message
    assert message.endswith(f"set OMP_NUM_THREADS={advice} for this run")


@pytest.mark.parametrize("threads, cores, load", [(2, 2, 0.4), (1, 2, 5.0), (4, 8, 4.0), (8, 8, 0.0)])
def test_silent_when_the_threads_have_their_cores(threads, cores, load):
    assert oversubscription_warning(threads, cores, load) is None


@pytest.fixture
def cpu_machine(monkeypatch):
    """An 8-core CPU machine with torch at 8 threads; `set_num_threads` is recorded, not applied to this process."""
    monkeypatch.setattr(cpu_threads.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(cpu_threads.torch, "get_num_threads", lambda: 8)
    monkeypatch.setattr(cpu_threads.os, "sched_getaffinity", lambda pid: set(range(8)))
    calls = []
    monkeypatch.setattr(cpu_threads.torch, "set_num_threads", calls.append)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    return calls


def test_unchosen_threads_are_set_to_the_free_cores_with_one_line(cpu_machine, monkeypatch, caplog):
    monkeypatch.setattr(cpu_threads.os, "getloadavg", lambda: (0.1, 0.0, 0.0))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with caplog.at_level(logging.WARNING, logger="hf_distill.run.cpu_threads"):
        cpu_threads.choose_torch_threads()
    assert cpu_machine == [4]
    assert os.environ["OMP_NUM_THREADS"] == "4"  # for Accelerate's state, which would set its own
    assert caplog.messages == [
        "using 4 torch threads per process: 8 CPU cores, a 1-minute load average of 0.1 from other processes, "
        "2 processes of this run (set OMP_NUM_THREADS to choose)"
    ]


def test_under_load_one_process_takes_the_free_cores(cpu_machine, monkeypatch):
    monkeypatch.setattr(cpu_threads.os, "getloadavg", lambda: (5.8, 2.0, 1.0))
    cpu_threads.choose_torch_threads()
    assert cpu_machine == [2]
    assert "OMP_NUM_THREADS" not in os.environ  # one process: its environment is left alone


def test_quiet_and_alone_nothing_changes(cpu_machine, monkeypatch, caplog):
    monkeypatch.setattr(cpu_threads.os, "getloadavg", lambda: (0.2, 0.0, 0.0))
    with caplog.at_level(logging.WARNING, logger="hf_distill.run.cpu_threads"):
        cpu_threads.choose_torch_threads()
    assert cpu_machine == [] and not caplog.text


def test_a_chosen_thread_count_wins_and_is_warned_about_when_too_high(cpu_machine, monkeypatch, caplog):
    monkeypatch.setattr(cpu_threads.os, "getloadavg", lambda: (6.0, 2.0, 1.0))
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    with caplog.at_level(logging.WARNING, logger="hf_distill.run.cpu_threads"):
        cpu_threads.choose_torch_threads()
    assert cpu_machine == [] and os.environ["OMP_NUM_THREADS"] == "8"
    assert caplog.text.strip().endswith("set OMP_NUM_THREADS=2 for this run")


def test_a_gpu_run_is_left_alone(cpu_machine, monkeypatch):
    monkeypatch.setattr(cpu_threads.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(cpu_threads.os, "getloadavg", lambda: (6.0, 2.0, 1.0))
    cpu_threads.choose_torch_threads()
    assert cpu_machine == [] and "OMP_NUM_THREADS" not in os.environ


@pytest.mark.parametrize("command", ["train", "cache-teacher", "evaluate"])
def test_hf_distill_chooses_the_threads_before_it_computes(monkeypatch, command):
    from hf_distill import cli

    calls = []
    monkeypatch.setattr(cli, "choose_torch_threads", lambda: calls.append("threads"))
    for name in ("run_training", "build_teacher_cache", "run_evaluation"):
        monkeypatch.setattr(cli, name, lambda *args: calls.append("work"))
    monkeypatch.setattr(cli, "format_results", str)
    recipe = os.path.join(os.path.dirname(SCRIPTS), "..", "recipes", "demo", "distill.yaml")
    extra = {"cache-teacher": ["--output_dir", "cache", "--top_k", "4"]}.get(command, [])
    cli.main([command, recipe, *extra])
    assert calls == ["threads", "work"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.distributed
def test_two_processes_launched_without_a_thread_count_split_the_cores():
    """Two processes of one run started as mpirun or srun start them: no `OMP_NUM_THREADS`, only the rank variables.
    Each takes half the cores, and Accelerate's state, which sets its own count in that case, keeps it."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    command = [sys.executable, os.path.join(SCRIPTS, "report_threads.py")]
    processes = [
        subprocess.Popen(command, env=dict(env, RANK=str(r), LOCAL_RANK=str(r)), stdout=subprocess.PIPE, text=True)
        for r in (0, 1)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    half = max(1, len(os.sched_getaffinity(0)) // 2)
    cores = len(os.sched_getaffinity(0))
    for rank, output in enumerate(outputs):
        assert f"rank {rank} of 2: threads before the group {half}, after {half}, cores {cores}" in output, output
