"""The model card (README.md) published with a distilled student."""

import os

import yaml

from .metric_names import EVAL_METRICS

TAGS = ["hf_distill", "distillation"]


def _as_list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def render_model_card(
    *,
    model_name: str,
    student_base: str | None,
    teacher: str | None,
    dataset: str | list[str] | None,
    alpha: float,
    loss_type: str,
    temperature: float,
    steps: int,
    eval_metrics: dict[str, float],
    tags: str | list[str] | None = None,
    language: str | list[str] | None = None,
    license: str | None = None,
    dataset_tags: str | list[str] | None = None,
    dataset_args: str | list[str] | None = None,
    pipeline_tag: str = "text-generation",
    library_name: str = "transformers",
) -> str:
    """Markdown with YAML metadata the hub understands (base model, datasets, tags, language, license).

    The arguments after `eval_metrics` are those of `Trainer.create_model_card`: `tags` are added to hf_distill's,
    `dataset_tags` (else `dataset`) are the metadata's `datasets`, `dataset_args` are shown beside the dataset.
    """
    metadata = {
        "library_name": library_name,
        "tags": TAGS + [t for t in _as_list(tags) if t not in TAGS],
        "pipeline_tag": pipeline_tag,
    }
    if student_base:
        metadata["base_model"] = student_base
    datasets = _as_list(dataset)
    if datasets or dataset_tags:
        metadata["datasets"] = _as_list(dataset_tags) or datasets
    if language:
        metadata["language"] = language
    if license:
        metadata["license"] = license
    method = "plain fine-tuning (alpha = 1.0, no teacher)" if teacher is None else f"distilled from `{teacher}`"
    shown_dataset = ", ".join(f"`{d}`" for d in datasets) or "not recorded"
    if dataset_args:
        shown_dataset += f" ({', '.join(_as_list(dataset_args))})"
    rows = [
        ("Student base", f"`{student_base}`" if student_base else "trained from scratch"),
        ("Teacher", f"`{teacher}`" if teacher else "none"),
        ("Dataset", shown_dataset),
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


def add_peft_metadata(output_dir: str, peft_model) -> None:
    """Let PEFT add its metadata to `output_dir/README.md` (`library_name: peft`, `base_model`, its version), as
    `Trainer.create_model_card` does, keeping the card's tags, which PEFT would replace with its own, and its
    `base_model` where PEFT's is empty (a base model built from a config has no name)."""
    from huggingface_hub import ModelCard

    path = os.path.join(output_dir, "README.md")
    before = ModelCard.load(path).data
    peft_model.create_or_update_model_card(output_dir)
    card = ModelCard.load(path)
    card.data.tags = list(dict.fromkeys([*(before.tags or []), *(card.data.tags or [])]))
    card.data.base_model = card.data.base_model or before.base_model
    card.save(path)
