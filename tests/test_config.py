"""DistillConfig validation: every bad value is refused by name, before any model is loaded."""

import pytest

from hf_distill import DistillConfig


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": -0.1}, "alpha=-0.1"),
        ({"alpha": 1.5}, "alpha=1.5"),
        ({"temperature": 0.0}, "temperature=0.0"),
        ({"temperature": -2.0}, "temperature=-2.0"),
        ({"loss_type": "kld"}, "loss_type='kld'.*forward_kl, reverse_kl, jsd"),
        ({"loss_type": "jsd", "beta": 0.0}, "beta=0.0"),
        ({"loss_type": "jsd", "beta": 1.0}, "beta=1.0"),
        ({"skew_lambda": 1.0}, "skew_lambda=1.0"),
        ({"skew_lambda": -0.5}, "skew_lambda=-0.5"),
        ({"early_stop_patience": 0, "eval_strategy": "steps"}, "early_stop_patience=0"),
        ({"early_stop_patience": 2}, r"early stopping without evaluation \(early_stop_patience=2\)"),
        ({"early_stop_min_delta": -1.0}, "early_stop_min_delta=-1.0"),
    ],
)
def test_invalid_values_raise_naming_field(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        DistillConfig(output_dir=str(tmp_path), **kwargs)


def test_defaults(tmp_path):
    config = DistillConfig(output_dir=str(tmp_path))
    assert (config.alpha, config.temperature, config.loss_type) == (0.5, 1.0, "forward_kl")
    assert config.teacher_model_name_or_path is None
    assert config.early_stop_patience is None


def test_early_stopping_tracks_eval_loss(tmp_path):
    config = DistillConfig(output_dir=str(tmp_path), early_stop_patience=2, eval_strategy="steps", eval_steps=5)
    assert config.metric_for_best_model == "loss"
    assert config.greater_is_better is False


def test_beta_endpoints_are_accepted_for_gjsd(tmp_path):
    """TRL's beta: 0 (forward KL) and 1 (reverse KL) are `gjsd`'s endpoints; `jsd` keeps (0, 1), and a loss type that
    ignores beta refuses one set away from its default (tests/losses/test_losses.py)."""
    for beta in (0.0, 1.0):
        assert DistillConfig(output_dir=str(tmp_path), loss_type="gjsd", beta=beta).beta == beta
