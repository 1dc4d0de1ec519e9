"""The warning for CPU training with more torch threads than the other processes leave cores."""

import logging
import os

import pytest

from hf_distill import cpu_threads
from hf_distill.cpu_threads import oversubscription_warning


@pytest.mark.parametrize(
    "threads, cores, load, advice",
    [
        (2, 2, 1.0, 1),  # the demo beside one busy process: issue 18's 13x cliff
        (2, 2, 0.6, 1),
        (8, 8, 4.2, 3),
        (4, 4, 7.0, 1),  # more load than cores: one thread
    ],
)
def test_warns_when_others_leave_fewer_cores_than_threads(threads, cores, load, advice):
    message = oversubscription_warning(threads, cores, load)
    assert message is not None
    assert f"{threads} threads on {cores} CPU cores" in message
    assert message.endswith(f"set OMP_NUM_THREADS={advice} for this run")


@pytest.mark.parametrize("threads, cores, load", [(2, 2, 0.4), (1, 2, 5.0), (4, 8, 4.0), (8, 8, 0.0)])
def test_silent_when_the_threads_have_their_cores(threads, cores, load):
    assert oversubscription_warning(threads, cores, load) is None


def test_cli_train_warns_on_a_busy_cpu_unless_threads_are_chosen(monkeypatch, caplog):
    monkeypatch.setattr(cpu_threads.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(cpu_threads.torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(cpu_threads.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(cpu_threads.os, "getloadavg", lambda: (1.5, 1.0, 1.0))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with caplog.at_level(logging.WARNING, logger="hf_distill.cpu_threads"):
        cpu_threads.warn_if_oversubscribed()
    assert "set OMP_NUM_THREADS=1" in caplog.text
    caplog.clear()
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    with caplog.at_level(logging.WARNING, logger="hf_distill.cpu_threads"):
        cpu_threads.warn_if_oversubscribed()
    assert not caplog.text


def test_hf_distill_train_checks_the_threads_first(monkeypatch):
    from hf_distill import cli

    calls = []
    monkeypatch.setattr(cli, "warn_if_oversubscribed", lambda: calls.append("check"))
    monkeypatch.setattr(cli, "run_training", lambda *args: calls.append("train"))
    cli.main(["train", os.path.join(os.path.dirname(os.path.dirname(__file__)), "recipes", "demo", "distill.yaml")])
    assert calls == ["check", "train"]
