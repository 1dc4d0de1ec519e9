"""`hf-distill evaluate`: the student against its teacher on a held-out split.

Each example's prompt is its tokens before the last run of target tokens (labels that are not -100) and its
reference completion is that run, so a chat example is judged on its last assistant turn. Reported for both models:
the generation metrics of their greedy completions (`evaluate` modules, combined with `evaluate.combine`; the
built-in ones ship in `hf_distill/metrics/` and load by path, offline), the teacher-forced CE and perplexity on the
reference, parameters and greedy tokens per second; for the pair: the student's forward and reverse KL to the
teacher and their top-1 agreement. Per category too, when the data has a `category` column.

Under `accelerate launch` the examples are split between the processes (generation and the teacher-forced pass),
gathered, and every process computes the results of the whole split from them: the same as one process, timings
aside; only the main process writes files (the CLI prints from it only).
"""

import dataclasses
import json
import math
import os

import evaluate
import torch
from accelerate import PartialState
from accelerate.utils import gather_object

from ..data.datasets import DistillDataCollator, prepare_datasets, split_prompt
from ..data.raw_dataset import load_raw_dataset
from ..generation.greedy import greedy_generate
from ..losses import DivergenceSpec, TeacherLogits, dense_distillation_terms
from ..models.causal_lm import load_causal_lm_config
from ..models.loading import load_student, load_teachers, load_tokenizer
from ..run.atomic_write import atomic_write
from ..run.main_process_first import main_process_first
from ..run.model_card import format_number, generation_metrics, update_model_card
from ..user_errors import UserInputError, bad_value
from .recipe import parse_recipe

# hf_distill/metrics/, beside this folder.
METRICS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "metrics")
BUILTIN_METRICS = ("exact_match", "token_f1")
# The file `hf-distill evaluate` writes into a local student folder, beside the model card it updates.
RESULTS_FILE = "evaluation.json"
# Per-example sums of the teacher-forced pass, in target tokens.
FORCED_TERMS = ("student_ce", "teacher_ce", "forward_kl", "reverse_kl", "agree", "tokens")


def load_metrics(names: list[str] = ()) -> evaluate.CombinedEvaluations:
    """The built-in generation metrics (by path) and `names` (an `evaluate` metric name or script path), combined."""
    modules = [evaluate.load(os.path.join(METRICS_DIR, f"{name}.py")) for name in BUILTIN_METRICS]
    for name in names:
        if name in BUILTIN_METRICS:
            continue
        try:
            modules.append(evaluate.load(name))
        except Exception as err:  # evaluate raises FileNotFoundError, ConnectionError, ImportError, ...
            offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "") else ""
            reason = str(err).strip().splitlines()[0].rstrip(".") if str(err).strip() else type(err).__name__
            raise UserInputError(
                "evaluate metric cannot be loaded",
                f"--metric {name!r}",
                f"{reason}; a metric by name is downloaded from the Hub, which needs network{offline}",
                "pass the path of a local copy of its script instead",
            ) from None
    return evaluate.combine(modules)


def teacher_forced_sums(student, teacher, dataset, tokenizer, batch_size: int) -> dict[str, torch.Tensor]:
    """Per-example sums `(N,)` over target tokens of `FORCED_TERMS`: both models' CE, KL(teacher || student),
    KL(student || teacher), top-1 agreement, and the number of target tokens."""
    collate = DistillDataCollator(tokenizer)
    device = next(student.parameters()).device
    forward, reverse = DivergenceSpec("forward_kl", alpha=0.0), DivergenceSpec("reverse_kl", alpha=0.0)
    sums = {name: [] for name in FORCED_TERMS}
    student.eval()
    teacher.eval()
    for start in range(0, len(dataset), batch_size):
        batch = collate(
            [
                {k: e[k] for k in ("input_ids", "labels")}
                for e in dataset.select(range(start, min(start + batch_size, len(dataset))))
            ]
        )
        inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask")}
        # Logits at position t predict the token at t + 1.
        labels = batch["labels"][:, 1:].to(device)
        with torch.no_grad():
            s = student(**inputs).logits[:, :-1]
            t = teacher(**inputs).logits[:, :-1]
        fkl = dense_distillation_terms(s, TeacherLogits([t]), labels, forward).per_example()
        rkl = dense_distillation_terms(s, TeacherLogits([t]), labels, reverse).per_example()
        values = {
            "student_ce": fkl["ce"],
            "teacher_ce": dense_distillation_terms(t, None, labels, forward).per_example()["ce"],
            "forward_kl": fkl["kd"],
            "reverse_kl": rkl["kd"],
            "agree": fkl["agree"],
            "tokens": fkl["tokens"],
        }
        for name, value in values.items():
            sums[name].append(value.cpu())
    # A process of a launch can be handed no example (fewer examples than processes).
    return {
        name: torch.cat(parts).double() if parts else torch.zeros(0, dtype=torch.double)
        for name, parts in sums.items()
    }


def _group_results(rows: list[int], forced, predictions, references, metrics) -> dict:
    tokens = forced["tokens"][rows].sum().item()
    mean = {name: forced[name][rows].sum().item() / tokens for name in FORCED_TERMS[:-1]}
    models = {}
    for role in ("student", "teacher"):
        scores = metrics.compute(
            predictions=[predictions[role][i] for i in rows], references=[references[i] for i in rows]
        )
        numbers = {k: float(v) for k, v in scores.items() if isinstance(v, int | float)}
        ce = mean[f"{role}_ce"]
        models[role] = {"ce": ce, "perplexity": math.exp(ce), **numbers}
    pair = {"forward_kl": mean["forward_kl"], "reverse_kl": mean["reverse_kl"], "top1_agreement": mean["agree"]}
    return {"examples": len(rows), "target_tokens": int(tokens), **models, "student_to_teacher": pair}


def _share(student, teacher, tokenizer, dataset, rows: list[int], max_new_tokens: int, batch_size: int) -> dict:
    """One process's part of the evaluation: the greedy completions and teacher-forced sums of the examples `rows`,
    with its generation counts and seconds."""
    part = dataset.select(rows)
    prompts = [split_prompt(e["input_ids"], e["labels"])[0] for e in part]
    progress = PartialState().is_main_process
    for model in (student, teacher):
        # The first call of generate pays one-off costs (kernels, caches) that would count against whichever
        # model is timed first.
        greedy_generate(model, tokenizer, prompts[:1], 2, desc="warm-up", progress=progress)
    runs = {
        role: greedy_generate(
            model, tokenizer, prompts, max_new_tokens, batch_size, desc=f"generating ({role})", progress=progress
        )
        for role, model in (("student", student), ("teacher", teacher))
    }
    forced = teacher_forced_sums(student, teacher, part, tokenizer, batch_size)
    return {
        "rows": rows,
        "texts": {role: run.texts for role, run in runs.items()},
        "counts": {role: (run.new_tokens, run.seconds) for role, run in runs.items()},
        "forced": {name: values.tolist() for name, values in forced.items()},
    }


def evaluate_models(student, teacher, tokenizer, dataset, categories, max_new_tokens: int, metrics, batch_size: int):
    """The results `hf-distill evaluate` reports, of the tokenized `dataset` (with `input_ids` and `labels`);
    `categories` names each example's category (or is None).

    Each process of a launch evaluates its contiguous share of the examples; the shares are gathered to every
    process, in example order. Generation ran in parallel, so `generation_seconds` is the slowest process's and
    `tokens_per_second` all processes' tokens over it."""
    state = PartialState()
    with state.split_between_processes(list(range(len(dataset)))) as rows:
        mine = _share(student, teacher, tokenizer, dataset, rows, max_new_tokens, batch_size)
    shares = gather_object([mine])
    order = [i for share in shares for i in share["rows"]]
    if order != list(range(len(dataset))):
        raise RuntimeError(f"the gathered shares hold examples {order}, not each of the {len(dataset)} once in order")
    predictions = {role: [t for share in shares for t in share["texts"][role]] for role in ("student", "teacher")}
    forced = {
        name: torch.tensor([v for share in shares for v in share["forced"][name]], dtype=torch.double)
        for name in FORCED_TERMS
    }
    references = [
        tokenizer.decode(split_prompt(e["input_ids"], e["labels"])[1], skip_special_tokens=True).strip()
        for e in dataset
    ]
    results = _group_results(list(range(len(dataset))), forced, predictions, references, metrics)
    results["processes"] = state.num_processes
    for role, model in (("student", student), ("teacher", teacher)):
        new_tokens = sum(share["counts"][role][0] for share in shares)
        seconds = max(share["counts"][role][1] for share in shares)
        results[role].update(
            parameters=model.num_parameters(),
            generated_tokens=new_tokens,
            generation_seconds=seconds,
            tokens_per_second=new_tokens / seconds,
        )
    results["student_to_teacher"].update(
        parameter_ratio=results["student"]["parameters"] / results["teacher"]["parameters"],
        speedup=results["student"]["tokens_per_second"] / results["teacher"]["tokens_per_second"],
    )
    if categories is not None:
        groups: dict[str, list[int]] = {}
        for i, category in enumerate(categories):
            groups.setdefault(category, []).append(i)
        results["categories"] = {
            name: _group_results(rows, forced, predictions, references, metrics)
            for name, rows in sorted(groups.items())
        }
    return results


def _categories(raw, dataset) -> list[str] | None:
    """The `category` of each example of the tokenized `dataset`, matched through its `id` (the raw split's `id`
    column, else its index)."""
    if "category" not in raw.column_names:
        return None
    ids = [str(i) for i in raw["id"]] if "id" in raw.column_names else [str(i) for i in range(len(raw))]
    by_id = dict(zip(ids, map(str, raw["category"])))
    return [by_id[i] for i in dataset["id"]]


def run_evaluation(
    recipe: str,
    overrides: list[str],
    model: str | None = None,
    teacher: str | None = None,
    split: str | None = None,
    max_new_tokens: int = 32,
    metric_names: list[str] = (),
    output: str | None = None,
) -> dict:
    """`hf-distill evaluate`: every argument is checked before any weight loads. The results go to `output` (when
    given) and, when the student is the recipe's run (its `output_dir`, the default), to `output_dir/evaluation.json`
    and the evaluation section of the run's model card (`README.md`, when it has one); another folder given with
    `--model` is only read. Under `accelerate launch` every process returns the same results and only the main
    process writes."""
    model_args, data_args, config = parse_recipe(recipe, overrides)
    if max_new_tokens < 1:
        raise bad_value("--max_new_tokens", max_new_tokens, "must be >= 1", "pass --max_new_tokens 1 or more")
    own_run = model is None or os.path.abspath(model) == os.path.abspath(config.output_dir)
    model = model or config.output_dir
    teacher = teacher or config.teacher_model_name_or_path
    if teacher is None:
        raise UserInputError(
            "no teacher to compare with",
            f"teacher_model_name_or_path=None, alpha={config.alpha}",
            "the recipe names no teacher",
            "pass --teacher DIR_OR_ID",
        )
    if isinstance(teacher, list):
        raise UserInputError(
            "an ensemble of teachers",
            f"teacher_model_name_or_path={teacher}",
            "evaluate compares the student with one teacher",
            "pass one member with --teacher",
        )
    if config.cross_tokenizer != "off":
        # Both models would be fed the student tokenizer's prompts.
        raise UserInputError(
            "evaluate with a teacher of another tokenizer",
            f"cross_tokenizer={config.cross_tokenizer!r}",
            "evaluate runs student and teacher on one tokenizer's prompts, and the recipe's teacher has its own",
            "pass --cross_tokenizer off and a --teacher of the student's tokenizer",
        )
    split = split or data_args.dataset_eval_split
    if split is None:
        raise UserInputError(
            "no split to evaluate", "dataset_eval_split=None", "the recipe has no eval split", "pass --split NAME"
        )
    # Under a launch, the device is where Accelerate's state (the process group) is set up from the recipe's use_cpu.
    device = config.device
    state = PartialState()

    def prepare():
        raw = load_raw_dataset(data_args)
        if split not in raw:
            raise UserInputError(
                "no such split",
                f"--split={split!r}",
                f"{data_args.dataset_name!r} has the splits {list(raw)}",
                "pass one of them",
            )
        metrics = load_metrics(metric_names)
        load_causal_lm_config(model, "--model", model_args.trust_remote_code)
        load_causal_lm_config(teacher, "--teacher", model_args.trust_remote_code)
        tokenizer = load_tokenizer(model_args, config)
        # The split to evaluate, prepared as prepare_datasets prepares a train split: the same tokens and filters.
        split_args = dataclasses.replace(
            data_args, dataset_train_split=split, dataset_eval_split=None, max_train_samples=data_args.max_eval_samples
        )
        return raw, metrics, tokenizer, prepare_datasets(split_args, tokenizer)[0]

    # The main process fills the datasets and metrics caches before the others read them.
    raw, metrics, tokenizer, dataset = main_process_first(prepare)
    unprompted = sum(not split_prompt(e["input_ids"], e["labels"])[0] for e in dataset)
    if unprompted:
        raise UserInputError(
            "examples without a prompt",
            f"--split={split!r}",
            f"{unprompted} of {len(dataset)} examples have no prompt (every token is a target, as in dataset_format "
            "'text')",
            "evaluate prompt + completion or messages data",
        )
    categories = _categories(raw[split], dataset)

    student = load_student(
        dataclasses.replace(model_args, model_name_or_path=model, student_init="pretrained"), config
    )
    (teacher_model,) = load_teachers(config, model_args, teacher_model=teacher)
    student.to(device)
    teacher_model.to(device)
    results = {"student_path": model, "teacher_path": teacher, "dataset": data_args.dataset_name, "split": split}
    results["max_new_tokens"] = max_new_tokens
    results.update(
        evaluate_models(
            student, teacher_model, tokenizer, dataset, categories, max_new_tokens, metrics,
            config.per_device_eval_batch_size,
        )
    )  # fmt: skip
    if state.is_main_process:
        if output:
            _write_json(output, results)
        if own_run:
            _write_json(os.path.join(model, RESULTS_FILE), results)
            if os.path.isfile(os.path.join(model, "README.md")):
                update_model_card(os.path.join(model, "README.md"), results)
    # Every process returns once the files are there.
    state.wait_for_everyone()
    return results


def _write_json(path: str, results: dict) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")

    atomic_write(path, write)


def format_results(results: dict) -> str:
    """The results as the text tables `hf-distill evaluate` prints."""
    student, teacher, pair = results["student"], results["teacher"], results["student_to_teacher"]
    generation = generation_metrics(results)
    lines = [
        f"{results['split']} split of {results['dataset']}: {results['examples']} examples, "
        f"{results['target_tokens']} target tokens, greedy completions of up to {results['max_new_tokens']} tokens",
        "",
        f"{'':<20}{'student':>12}{'teacher':>12}",
    ]
    for name in ("parameters", *generation, "ce", "perplexity", "tokens_per_second"):
        lines.append(f"{name:<20}{format_number(student[name]):>12}{format_number(teacher[name]):>12}")
    lines += ["", "student to teacher"] + [f"  {name:<18}{format_number(value):>12}" for name, value in pair.items()]
    if "categories" in results:
        head = "".join(f"{f'{role} {name}':>20}" for name in generation[:2] for role in ("student", "teacher"))
        lines += ["", f"{'category':<12}{'examples':>9}{head}{'forward_kl':>12}{'agreement':>12}"]
        for category, group in results["categories"].items():
            scores = "".join(
                f"{group[role][name]:>20.4f}" for name in generation[:2] for role in ("student", "teacher")
            )
            kl, agree = group["student_to_teacher"]["forward_kl"], group["student_to_teacher"]["top1_agreement"]
            lines.append(f"{category:<12}{group['examples']:>9}{scores}{kl:>12.4f}{agree:>12.4f}")
    return "\n".join(lines)
