"""The model card (README.md) published with a distilled student, and its evaluation section (`hf-distill
evaluate`): a table of student and teacher, and the student's results as Hub `model-index` metadata."""

import os

import yaml
from huggingface_hub import EvalResult, ModelCard
from huggingface_hub.repocard_data import eval_results_to_model_index

from ..metrics.names import EVAL_METRICS
from ..user_errors import UserInputError

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
    evaluation: dict | None = None,
    cross_tokenizer: str = "off",
) -> str:
    """Markdown with YAML metadata the hub understands (base model, datasets, tags, language, license).

    `cross_tokenizer` (`uld` or `aligned`, a teacher with its own tokenizer) names the divergence computed per
    aligned span instead of `loss_type` alone.

    The arguments from `tags` to `library_name` are those of `Trainer.create_model_card`: `tags` are added to
    hf_distill's, `dataset_tags` (else `dataset`) are the metadata's `datasets`, `dataset_args` are shown beside the
    dataset. `evaluation`, results written by `hf-distill evaluate`, adds the evaluation section and `model-index`.
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
    divergence = {"uld": "ULD", "aligned": f"({loss_type} on shared tokens + ULD)"}.get(cross_tokenizer, loss_type)
    rows = [
        ("Student base", f"`{student_base}`" if student_base else "trained from scratch"),
        ("Teacher", f"`{teacher}`" if teacher else "none"),
        ("Dataset", shown_dataset),
        ("Loss", f"{alpha} * CE + {1 - alpha:g} * T^2 * {divergence}"),
        ("Loss type", loss_type),
        ("Temperature", f"{temperature:g}"),
        ("Alpha (CE weight)", f"{alpha:g}"),
        ("Optimizer steps", str(steps)),
    ]
    if teacher is not None and cross_tokenizer != "off":
        rows.insert(2, ("Cross-tokenizer", f"{cross_tokenizer}: the teacher has its own tokenizer, compared per span"))
    rows += [(name, f"{eval_metrics[name]:.4f}") for name in EVAL_METRICS if name in eval_metrics]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    if evaluation is not None:
        metadata["model-index"] = model_index(model_name, evaluation)
    section = f"\n{evaluation_section(evaluation)}" if evaluation is not None else ""
    return (
        f"---\n{yaml.safe_dump(metadata, sort_keys=False)}---\n\n"
        f"# {model_name}\n\n"
        f"A causal language model {method} with [hf_distill](https://github.com/hf-distill/hf_distill).\n\n"
        f"| | |\n|---|---|\n{table}\n\n"
        "## Use\n\n"
        "```python\nfrom transformers import pipeline\n\n"
        f'generator = pipeline("text-generation", model="{model_name}")\n```\n'
        f"{section}"
    )


EVALUATION_START = "<!-- hf-distill evaluate: this section is rewritten by each run of the command -->"
EVALUATION_END = "<!-- end of the hf-distill evaluate section -->"
# The rows of the evaluation table, beside each generation metric: results keys and their labels.
FORCED_ROWS = {"ce": "CE on the reference (nats/token)", "perplexity": "perplexity"}
SPEED_ROWS = {"parameters": "parameters", "tokens_per_second": "greedy tokens/s"}
PAIR_ROWS = {
    "forward_kl": "KL(teacher \\|\\| student) per token",
    "reverse_kl": "KL(student \\|\\| teacher) per token",
    "top1_agreement": "top-1 agreement",
    "parameter_ratio": "parameters, student / teacher",
    "speedup": "greedy tokens/s, student / teacher",
}


def generation_metrics(evaluation: dict) -> list[str]:
    """The generation metrics of an evaluation (`exact_match`, `token_f1` and any added with `--metric`)."""
    skip = {*FORCED_ROWS, *SPEED_ROWS, "generated_tokens", "generation_seconds"}
    return [name for name in evaluation["student"] if name not in skip]


def model_index(model_name: str, evaluation: dict) -> list[dict]:
    """The student's results in the Hub's `model-index` format: generation metrics and perplexity."""
    names = [*generation_metrics(evaluation), "perplexity"]
    results = [
        EvalResult(
            task_type="text-generation",
            dataset_type=evaluation["dataset"],
            dataset_name=evaluation["dataset"],
            dataset_split=evaluation["split"],
            metric_type=name,
            metric_value=round(evaluation["student"][name], 4),
            metric_name=name,
        )
        for name in names
    ]
    return eval_results_to_model_index(model_name, results)


def evaluation_section(evaluation: dict) -> str:
    """Markdown: the student beside its teacher, overall and per category."""
    student, teacher = evaluation["student"], evaluation["teacher"]
    generation = generation_metrics(evaluation)
    rows = [(name, name) for name in generation] + list(FORCED_ROWS.items()) + list(SPEED_ROWS.items())
    lines = [
        EVALUATION_START,
        "## Evaluation",
        "",
        f"`hf-distill evaluate` on split `{evaluation['split']}` of `{evaluation['dataset']}`: "
        f"{evaluation['examples']} examples, greedy completions of up to {evaluation['max_new_tokens']} new tokens "
        f"scored against the reference answer; CE and perplexity on the reference ({evaluation['target_tokens']} "
        f"target tokens); teacher `{evaluation['teacher_path']}`.",
        "",
        "| | student | teacher |",
        "|---|---:|---:|",
    ]
    lines += [f"| {label} | {format_number(student[key])} | {format_number(teacher[key])} |" for key, label in rows]
    lines += ["", "| student to teacher | |", "|---|---:|"]
    lines += [
        f"| {label} | {format_number(evaluation['student_to_teacher'][key])} |" for key, label in PAIR_ROWS.items()
    ]
    if "categories" in evaluation:
        head = " | ".join(f"{name} ({role})" for name in generation for role in ("student", "teacher"))
        lines += ["", f"| category | examples | {head} | KL(teacher \\|\\| student) |"]
        lines.append("|---|---:|" + "---:|" * (2 * len(generation) + 1))
        for category, group in evaluation["categories"].items():
            scores = " | ".join(
                format_number(group[role][name]) for name in generation for role in ("student", "teacher")
            )
            kl = format_number(group["student_to_teacher"]["forward_kl"])
            lines.append(f"| {category} | {group['examples']} | {scores} | {kl} |")
    return "\n".join([*lines, EVALUATION_END, ""])


def format_number(value: float) -> str:
    # Counts and rates (parameters, tokens/s) in whole units; metrics, losses and ratios to 4 decimals.
    return f"{value:,.0f}" if isinstance(value, int) or abs(value) >= 100 else f"{value:.4f}"


def update_model_card(path: str, evaluation: dict) -> None:
    """Put `evaluation` into the card at `path`: its evaluation section (replacing the one there) and its
    `model-index` metadata; the rest of the card is kept."""
    with open(path) as f:
        text = f.read()
    metadata, body = {}, text
    if text.startswith("---\n"):
        _, front, body = text.split("---\n", 2)
        metadata = yaml.safe_load(front) or {}
    title = next((line[2:].strip() for line in body.splitlines() if line.startswith("# ")), None)
    metadata["model-index"] = model_index(
        title or os.path.basename(os.path.dirname(os.path.abspath(path))), evaluation
    )
    if EVALUATION_START in body and EVALUATION_END in body:
        before, rest = body.split(EVALUATION_START, 1)
        body = before + rest.split(EVALUATION_END, 1)[1].lstrip("\n")
    body = body.rstrip("\n") + "\n\n" + evaluation_section(evaluation)
    with open(path, "w") as f:
        f.write(f"---\n{yaml.safe_dump(metadata, sort_keys=False)}---\n{body}")


def add_peft_metadata(output_dir: str, peft_model) -> None:
    """Let PEFT add its metadata to `output_dir/README.md` (`library_name: peft`, `base_model`, its version), as
    `Trainer.create_model_card` does, keeping the card's tags, which PEFT would replace with its own, and its
    `base_model` where PEFT's is empty (a base model built from a config has no name)."""
    path = os.path.join(output_dir, "README.md")
    before = ModelCard.load(path).data
    peft_model.create_or_update_model_card(output_dir)
    card = ModelCard.load(path)
    card.data.tags = list(dict.fromkeys([*(before.tags or []), *(card.data.tags or [])]))
    card.data.base_model = card.data.base_model or before.base_model
    card.save(path)


def write_model_card(
    trainer,
    *,
    language: str | None = None,
    license: str | None = None,
    tags: str | list[str] | None = None,
    model_name: str | None = None,
    finetuned_from: str | None = None,
    tasks: str | list[str] | None = None,
    dataset_tags: str | list[str] | None = None,
    dataset: str | list[str] | None = None,
    dataset_args: str | list[str] | None = None,
) -> None:
    """Write `output_dir/README.md` of a `DistillTrainer`'s run, with `Trainer.create_model_card`'s arguments. A
    PEFT student keeps PEFT's metadata (`library_name: peft`, `base_model`)."""
    tasks = [tasks] if isinstance(tasks, str) else list(tasks or [])
    if len(tasks) > 1:
        raise UserInputError(f"tasks={tasks}: the model card has one pipeline_tag; give one task")
    args, student = trainer.args, trainer.accelerator.unwrap_model(trainer.model)
    peft_config = getattr(student, "peft_config", None)
    if peft_config and not finetuned_from:
        finetuned_from = peft_config[student.active_adapter].base_model_name_or_path
    # A teacher built from a config has no name: its class says at least what it was (`Teacher.names`).
    teacher = ", ".join(trainer.teacher.names()) or None
    eval_metrics = next((h for h in reversed(trainer.state.log_history) if "eval_loss" in h), {})
    card = render_model_card(
        model_name=model_name or args.hub_model_id or os.path.basename(os.path.abspath(args.output_dir)),
        student_base=finetuned_from,
        teacher=teacher,
        dataset=dataset,
        alpha=args.alpha,
        loss_type=args.loss_type,
        temperature=args.temperature,
        steps=trainer.state.global_step,
        eval_metrics=eval_metrics,
        tags=tags,
        language=language,
        license=license,
        dataset_tags=dataset_tags,
        dataset_args=dataset_args,
        pipeline_tag=tasks[0] if tasks else "text-generation",
        cross_tokenizer=args.cross_tokenizer,
    )
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "README.md"), "w") as f:
        f.write(card)
    if peft_config:
        add_peft_metadata(args.output_dir, student)
