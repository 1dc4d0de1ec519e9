"""Teacher ensembles: the combination formulas, equivalence with one teacher, weights, vocabularies, recipes."""

import json

import pytest
import torch
import torch.nn.functional as F
from test_trainer import assert_same_weights, make_args, train, weights
from testing_utils import ensemble_recipe, tiny_llama, variable_length_dataset

from hf_distill import DistillTrainer
from hf_distill.cli import main
from hf_distill.losses import ENSEMBLE_MODES
from hf_distill.models.hidden_states import PROBE_IDS
from hf_distill.teachers.live import LiveTeacher


def logged(trainer, key):
    return torch.tensor([log[key] for log in trainer.state.log_history if key in log])


def assert_same_run(a, b):
    assert_same_weights(weights(a), weights(b))
    for key in ("loss", "ce_loss", "kd_loss"):
        assert len(logged(a, key)) == 3
        torch.testing.assert_close(logged(a, key), logged(b, key), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ENSEMBLE_MODES)
def test_ensemble_forward_is_the_softened_combination(mode):
    members = [tiny_llama(seed=2, hidden=48), tiny_llama(seed=3, hidden=32)]
    ids = torch.randint(3, 64, (2, 7))
    ensemble = LiveTeacher(members, [0.25, 0.75], mode, kd_vocab=64)
    combined = ensemble.log_probs({"input_ids": ids}, temperature=2.0).exp()
    with torch.no_grad():
        p = [F.softmax(m(input_ids=ids).logits[:, :-1] / 2.0, dim=-1) for m in members]
    if mode == "mean_probs":
        expected = 0.25 * p[0] + 0.75 * p[1]
    else:
        geometric = p[0] ** 0.25 * p[1] ** 0.75
        expected = geometric / geometric.sum(-1, keepdim=True)
    torch.testing.assert_close(combined, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("mode", ENSEMBLE_MODES)
def test_two_identical_teachers_equal_one(tmp_path, mode):
    single = train(tmp_path / "a")
    pair = [tiny_llama(seed=2, hidden=48, layers=2) for _ in range(2)]
    ensemble = train(tmp_path / "b", teacher=pair, teacher_ensemble=mode)
    assert isinstance(ensemble.teacher, LiveTeacher) and len(ensemble.teacher.models) == 2
    assert_same_run(single, ensemble)


def test_zero_weight_member_is_ignored(tmp_path):
    single = train(tmp_path / "a")
    pair = [tiny_llama(seed=2, hidden=48, layers=2), tiny_llama(seed=5, hidden=32, layers=1)]
    ensemble = train(tmp_path / "b", teacher=pair, teacher_weights=[1.0, 0.0])
    assert_same_run(single, ensemble)
    mixed = train(tmp_path / "c", teacher=pair, teacher_weights=[1.0, 1.0])
    assert not torch.allclose(logged(mixed, "kd_loss"), logged(single, "kd_loss"))


def test_mismatched_member_vocabularies_are_refused(tmp_path):
    with pytest.raises(
        ValueError, match="teacher ensemble vocabulary mismatch: teacher 0 has 64 logits and teacher 1"
    ):
        DistillTrainer(
            model=tiny_llama(seed=1),
            teacher_model=[tiny_llama(seed=2), tiny_llama(seed=3, vocab=200)],
            args=make_args(tmp_path),
            train_dataset=variable_length_dataset(),
        )


def test_weights_must_match_the_teachers(tmp_path):
    with pytest.raises(
        ValueError, match=r"^invalid teacher_weights \(teacher_weights=\[1.0\]\): 1 entries for 2 teachers"
    ):
        DistillTrainer(
            model=tiny_llama(seed=1),
            teacher_model=[tiny_llama(seed=2), tiny_llama(seed=3)],
            args=make_args(tmp_path, teacher_weights=[1.0]),
            train_dataset=variable_length_dataset(),
        )


def test_recipe_with_a_list_of_teachers(workspace):
    tmp_path, recipe = workspace
    recipe, second = ensemble_recipe(tmp_path, recipe)
    main(["check", recipe])
    main(["train", recipe, "--max_steps", "2"])
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and any("kd_loss" in entry for entry in state["log_history"])
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"{tmp_path / 'teacher'}, {second}" in card


def test_model_card_names_ensemble_members_passed_as_models(tmp_path):
    """Without teacher_model_name_or_path, the card names each member by its config's name_or_path."""
    members = [tiny_llama(seed=2), tiny_llama(seed=3)]
    for member, name in zip(members, ("org/teacher-a", "org/teacher-b")):
        member.config._name_or_path = name
    trainer = DistillTrainer(
        model=tiny_llama(seed=1),
        teacher_model=members,
        args=make_args(tmp_path),
        train_dataset=variable_length_dataset(),
    )
    trainer.create_model_card()
    assert "org/teacher-a, org/teacher-b" in (tmp_path / "README.md").read_text()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(teacher_weights=[1.0]), r"\(teacher_weights=\[1.0\]\): 1 entries for 2 teachers; give one weight a "),
        (dict(teacher_weights=[-1.0, 2.0]), r"\(teacher_weights=\[-1.0, 2.0\]\): must be >= 0 with a positive sum"),
        (dict(teacher_weights=[0.0, 0.0]), r"\(teacher_weights=\[0.0, 0.0\]\): must be >= 0 with a positive sum"),
        (dict(teacher_ensemble="max"), "teacher_ensemble='max' is not supported"),
        (dict(teacher_model_name_or_path=[]), r"\(teacher_model_name_or_path=\[\]\): an empty list names no teacher"),
    ],
)
def test_bad_ensemble_config(tmp_path, fields, message):
    with pytest.raises(ValueError, match=message):
        make_args(tmp_path, **{"teacher_model_name_or_path": ["a", "b"], **fields})


@pytest.mark.parametrize("mode", ENSEMBLE_MODES)
def test_ensemble_trains_the_same_chunked_and_dense(tmp_path, mode):
    """A live ensemble through the fused chunked loss (each member kept to hidden states, chunks of 5 target tokens)
    reaches the weights of the dense path (each member's full logits combined by LiveTeacher)."""
    pair = [tiny_llama(seed=2, hidden=48, layers=2), tiny_llama(seed=5, hidden=32, layers=1)]
    projected = []

    def record(module, args, kwargs):
        # The trainer's build-time probe of each head (hidden_states.PROBE_IDS) runs the full forward once.
        if kwargs["input_ids"].tolist() != [list(PROBE_IDS)]:
            projected.append(kwargs.get("logits_to_keep", 0))

    for member in pair:
        member.register_forward_pre_hook(record, with_kwargs=True)
    chunked = train(
        tmp_path / "chunked", teacher=pair, teacher_ensemble=mode, teacher_weights=[1, 3], loss_chunk_size=5
    )
    # The members ran to hidden states only: no position was projected to logits.
    assert projected and all(isinstance(k, torch.Tensor) and k.numel() == 0 for k in projected)
    projected.clear()
    dense = train(tmp_path / "dense", teacher=pair, teacher_ensemble=mode, teacher_weights=[1, 3], loss_chunk_size=0)
    assert projected and all(k == 0 for k in projected)
    assert_same_run(chunked, dense)
