"""The model card (README.md) published with a distilled student."""

import yaml

from .metric_names import EVAL_METRICS


def render_model_card(
    *,
    model_name: str,
    student_base: str | None,
    teacher: str | None,
    dataset: str | None,
    alpha: float,
    loss_type: str,
    temperature: float,
    steps: int,
    eval_metrics: dict[str, float],
) -> str:
    """Markdown with YAML metadata the hub understands (base model, datasets, tags)."""
    metadata = {
        "library_name": "transformers",
        "tags": ["hf_distill", "distillation"],
        "pipeline_tag": "text-generation",
    }
    if student_base:
        metadata["base_model"] = student_base
    if dataset:
        metadata["datasets"] = [dataset]
    method = "plain fine-tuning (alpha = 1.0, no teacher)" if teacher is None else f"distilled from `{teacher}`"
    rows = [
        ("Student base", f"`{student_base}`" if student_base else "trained from scratch"),
        ("Teacher", f"`{teacher}`" if teacher else "none"),
        ("Dataset", f"`{dataset}`" if dataset else "not recorded"),
        ("Loss", f"{alpha} * CE + {1 - alpha:g} * T^2 * {loss_type}"),
        ("Loss type", loss_type),
        ("Temperature", f"{temperature:g}"),
        ("Alpha (CE weight)", f"{alpha:g}"),
        ("Optimizer steps", str(steps)),
    ]
    rows += [(name, f"{eval_metrics[name]:.4f}") for name in EVAL_METRICS if name in eval_metrics]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return (
        f"---\n{yaml.safe_dump(metadata, sort_keys=False)}---\n\n"
        f"# {model_name}\n\n"
        f"A causal language model {method} with [hf_distill](https://github.com/hf-distill/hf_distill).\n\n"
        f"| | |\n|---|---|\n{table}\n\n"
        "## Use\n\n"
        "```python\nfrom transformers import pipeline\n\n"
        f'generator = pipeline("text-generation", model="{model_name}")\n```\n'
    )
