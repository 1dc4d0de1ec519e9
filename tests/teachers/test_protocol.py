"""The teacher protocol: every kind implements it, and nothing outside `teachers/` and `losses/` asks a teacher its
class or reads an attribute it may lack."""

import os
import re
from typing import runtime_checkable

import pytest
import torch
from testing_utils import tiny_llama

from hf_distill.losses import TeacherHeads, TeacherLogits, TopKTeacher
from hf_distill.teachers.cached import CachedTeacher
from hf_distill.teachers.live import LiveTeacher
from hf_distill.teachers.no_teacher import NoTeacher
from hf_distill.teachers.protocol import DENSE_LOGITS, HIDDEN_STATES, TOP_K_LOG_PROBS, Teacher

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "hf_distill")
# A teacher's class tested, or an attribute of a teacher read with a fallback: the decisions the protocol owns.
LADDER = re.compile(r"isinstance\([^)]*\b\w*Teacher\b|getattr\((self\.)?teacher\b|getattr\(trainer\.teacher\b")


def package_files():
    for folder, _, names in os.walk(PACKAGE):
        for name in names:
            if name.endswith(".py"):
                yield os.path.join(folder, name)


def test_no_teacher_kind_is_tested_outside_teachers_and_losses():
    found = []
    for path in package_files():
        part = os.path.relpath(path, PACKAGE).split(os.sep)[0]
        if part in ("teachers", "losses"):
            continue
        for number, line in enumerate(open(path), start=1):
            if LADDER.search(line):
                found.append(f"{os.path.relpath(path, PACKAGE)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


def test_the_check_finds_a_ladder():
    assert LADDER.search("if isinstance(self.teacher, LiveTeacher):")
    assert LADDER.search('fused = getattr(self.teacher, "fused", True)')
    assert not LADDER.search("tokenizer = getattr(processing_class, 'tokenizer', None)")


def kinds():
    model = tiny_llama(seed=2, hidden=32)
    return {
        "none": NoTeacher(),
        "model": LiveTeacher([model], [1.0], "mean_probs", kd_vocab=64),
        "ensemble": LiveTeacher([model, tiny_llama(seed=3, hidden=32)], [0.5, 0.5], "mean_probs", kd_vocab=64),
        "cache": CachedTeacher("cache-dir", "renormalized", []),
    }


@pytest.mark.parametrize("kind", ["none", "model", "ensemble", "cache"])
def test_every_kind_implements_the_protocol(kind):
    teacher = kinds()[kind]
    assert isinstance(teacher, runtime_checkable(Teacher)) and teacher.kind == kind
    assert teacher.gives <= {DENSE_LOGITS, TOP_K_LOG_PROBS, HIDDEN_STATES}
    assert teacher.distills == (kind != "none") and teacher.evaluates == (kind in ("model", "ensemble"))
    assert (teacher.writer is not None) == (kind == "model")


def test_each_kind_gives_its_side():
    teachers = kinds()
    ids = torch.randint(3, 64, (2, 6))
    inputs = {"input_ids": ids, "use_cache": False}
    assert teachers["none"].side({}, inputs, fused=True, training=True) is None
    assert isinstance(teachers["model"].side({}, inputs, fused=True, training=True), TeacherHeads)
    dense = teachers["ensemble"].side({}, inputs, fused=False, training=True)
    assert isinstance(dense, TeacherLogits) and len(dense.logits) == 2 and dense.logits[0].shape == (2, 5, 64)
    batch = {
        "teacher_topk_ids": torch.zeros(2, 5, 4, dtype=torch.long),
        "teacher_topk_logprobs": torch.zeros(2, 5, 4),
        "teacher_tail_logprob": torch.zeros(2, 5),
    }
    assert isinstance(teachers["cache"].side(batch, inputs, fused=True, training=True), TopKTeacher)
    # Evaluation batches carry no cache: no teacher there; a training batch without one is an error.
    assert teachers["cache"].side({}, inputs, fused=False, training=False) is None
    with pytest.raises(ValueError, match="carry no cached teacher"):
        teachers["cache"].side({}, inputs, fused=False, training=True)


def test_a_card_names_each_kind():
    teachers = kinds()
    assert teachers["none"].names() == [] and teachers["cache"].names() == ["the teacher cache cache-dir"]
    assert teachers["model"].names() == ["LlamaForCausalLM"]  # built from a config: no path, its class
    named = LiveTeacher([tiny_llama(seed=2, hidden=32)], [1.0], "mean_probs", 64, names=["org/teacher"])
    assert named.names() == ["org/teacher"]
