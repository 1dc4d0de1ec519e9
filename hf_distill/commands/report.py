"""`hf-distill report OUTPUT_DIR`: plots of a run's `metrics.csv` and `samples.csv`, and a Markdown summary.

Everything goes to `OUTPUT_DIR/report/`: `loss.png`, `ce_kd.png`, `learning_rate.png`, `generation.png` (runs that
generate completions), `answers.png` (runs with `eval_generate`), `kd_distribution.png` and `report.md`. The
rounds of a multi-round run are concatenated on one global step axis, their boundaries marked.
"""

import csv
import os
import re
from dataclasses import dataclass

from ..metrics.names import (
    CE_LOSS,
    COMPLETION_LENGTH,
    EVAL_METRICS,
    EXACT_MATCH,
    KD_LOSS,
    LOSS,
    ON_POLICY_FRACTION,
    TEACHER_AGREEMENT,
    TEACHER_LOGPROB,
    TOKEN_F1,
    TRAIN_LOSSES,
    TRUNCATED_FRACTION,
    prefixed,
)
from ..run.csv_writer import readable_rows
from ..run.logs import METRICS_FILE, SAMPLES_FILE
from ..user_errors import UserInputError

REPORT_DIR = "report"
_FINAL_COLUMNS = (*TRAIN_LOSSES, *EVAL_METRICS)


class ReportError(UserInputError):
    """A report that cannot be made (no metrics, or matplotlib missing), with a message fit to show the user as is."""


@dataclass
class _Run:
    """The files of one training run (a round of a multi-round run), its steps shifted by `offset` on the plots."""

    label: str
    metrics: list[dict]
    last_eval: list[dict]
    offset: int = 0

    def series(self, split: str, column: str) -> tuple[list[int], list[float]]:
        points = [
            (r["step"] + self.offset, r[column])
            for r in self.metrics
            if r["split"] == split and r.get(column) is not None
        ]
        return [x for x, _ in points], [y for _, y in points]

    def last(self, split: str) -> dict:
        return next((r for r in reversed(self.metrics) if r["split"] == split), {})


def _read_csv(path: str, parse) -> list:
    """`parse(row)` of the readable rows of `path` (none if there is no such file); the others are skipped with a
    warning naming their lines (`csv_files.readable_rows`)."""
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        return list(readable_rows(csv.DictReader(f), path, parse))


def _number(value: str) -> float | None:
    return float(value) if value not in ("", None) else None


def _metrics_row(row: dict[str, str]) -> dict:
    values = {k: _number(v) for k, v in row.items() if k not in ("step", "split")}
    return {**values, "step": int(row["step"]), "split": row["split"]}


def _sample_row(row: dict[str, str]) -> dict:
    # What the report reads of a sample, checked here: a ValueError leaves the row out.
    int(row["step"])
    float(row[KD_LOSS])
    return row


def _load_run(folder: str, label: str) -> _Run:
    metrics = _read_csv(os.path.join(folder, METRICS_FILE), _metrics_row)
    samples = [r for r in _read_csv(os.path.join(folder, SAMPLES_FILE), _sample_row) if r["split"] == "eval"]
    last_step = max((int(r["step"]) for r in samples), default=None)
    # An evaluation at the last training step and the final one after training share a step (and the same weights).
    last_eval = {r["id"]: r for r in samples if int(r["step"]) == last_step}
    return _Run(label, metrics, list(last_eval.values()))


def _load_runs(output_dir: str) -> list[_Run]:
    """The run in `output_dir`, or its rounds (`round-<k>/`) in order, with their global step offsets."""
    if os.path.isfile(os.path.join(output_dir, METRICS_FILE)):
        return [_load_run(output_dir, "")]
    rounds = []
    if os.path.isdir(output_dir):
        for name in os.listdir(output_dir):
            match = re.fullmatch(r"round-(\d+)", name)
            if match and os.path.isfile(os.path.join(output_dir, name, METRICS_FILE)):
                rounds.append((int(match.group(1)), name))
    if not rounds:
        raise ReportError(
            "no metrics to report",
            output_dir,
            f"no {METRICS_FILE} in it or in its round-<k>/ folders",
            "train with metrics_csv: true (the default)",
        )
    runs, offset = [], 0
    for number, name in sorted(rounds):
        run = _load_run(os.path.join(output_dir, name), f"round {number}")
        run.offset = offset
        offset += max((r["step"] for r in run.metrics), default=0)
        runs.append(run)
    return runs


def write_report(output_dir: str, top: int = 10) -> str:
    """Write the plots and `report.md` to `output_dir/report/`; returns the path of `report.md`."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise ReportError(
            "matplotlib is not installed",
            "hf-distill report",
            "it draws the plots",
            "pip install hf_distill[plots]",
        ) from None
    runs = _load_runs(output_dir)
    folder = os.path.join(output_dir, REPORT_DIR)
    os.makedirs(folder, exist_ok=True)

    def figure(rows: int = 1):
        # Figure with the Agg canvas rather than pyplot: no global backend switch, no window, nothing left open.
        fig = Figure(figsize=(9, 3.2 * rows + 0.8), dpi=110, layout="constrained")
        FigureCanvasAgg(fig)
        return fig, fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]

    plots = {}
    xlabel = "global step (rounds concatenated)" if len(runs) > 1 else "step"
    panels = {
        "loss.png": ("Training and evaluation loss", [[("train", LOSS), ("eval", LOSS)]], ["loss"]),
        "ce_kd.png": (
            "Cross-entropy and distillation terms",
            [[("train", CE_LOSS), ("eval", CE_LOSS)], [("train", KD_LOSS), ("eval", KD_LOSS)]],
            ["CE", "KD"],
        ),
        "learning_rate.png": ("Learning rate", [[("train", "learning_rate")]], ["learning rate"]),
        "answers.png": (
            "Greedy answers at evaluation (eval_generate)",
            [[("eval", EXACT_MATCH), ("eval", TOKEN_F1)]],
            ["score"],
        ),
        # Drawn for runs that generate (lmbda > 0 or seq_kd) only: the others have no such column.
        "generation.png": (
            "Generated completions",
            [
                [("train", COMPLETION_LENGTH)],
                [("train", TEACHER_LOGPROB)],
                [("train", TRUNCATED_FRACTION), ("train", ON_POLICY_FRACTION)],
            ],
            ["tokens", "teacher log-prob", "fraction"],
        ),
    }
    for name, (title, rows, ylabels) in panels.items():
        fig, axes = figure(len(rows))
        drawn = 0
        for ax, series, ylabel in zip(axes, rows, ylabels):
            drawn += _plot_series(ax, runs, series)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
        if drawn:
            axes[0].set_title(title)
            axes[-1].set_xlabel(xlabel)
            fig.savefig(os.path.join(folder, name))
            plots[name] = title

    evaluated = [run for run in runs if run.last_eval]
    if evaluated:
        fig, (ax,) = figure()
        values = [[float(r[KD_LOSS]) for r in run.last_eval] for run in evaluated]
        # Shared bins, so that the rounds' distributions can be compared bar by bar.
        bounds = (min(map(min, values)), max(map(max, values)))
        for run, kd in zip(evaluated, values):
            label = f"{run.label}, " if run.label else ""
            label += f"step {run.last_eval[0]['step']} ({len(kd)} examples)"
            ax.hist(kd, bins=30, range=bounds, alpha=0.5, label=label)
        ax.set_title("Per-example KD at the last evaluation")
        ax.set_xlabel("KD (per-token mean over the example)")
        ax.set_ylabel("examples")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
        ax.grid(alpha=0.3)
        fig.savefig(os.path.join(folder, "kd_distribution.png"))
        plots["kd_distribution.png"] = "Per-example KD at the last evaluation"

    path = os.path.join(folder, "report.md")
    with open(path, "w") as f:
        f.write(_markdown(output_dir, runs, plots, top))
    return path


def _plot_series(ax, runs: list[_Run], series: list[tuple[str, str]]) -> int:
    """Each (split, metric) in one colour across rounds; returns how many lines were drawn."""
    drawn = 0
    for index, (split, name) in enumerate(series):
        style = {"color": f"C{index}", "marker": "o" if split == "eval" else None, "markersize": 4}
        label = f"{split} {name}"
        column = prefixed(name) if split == "eval" else name
        for run in runs:
            steps, values = run.series(split, column)
            if values:
                ax.plot(steps, values, label=label, **style)
                label = None  # one legend entry per series, not per round
                drawn += 1
    if drawn:
        ax.legend()
    for run in runs[1:]:
        ax.axvline(run.offset, color="grey", linestyle=":", linewidth=1)
    if len(runs) > 1:
        for run in runs:
            ax.annotate(
                run.label,
                (run.offset, 1),
                xycoords=("data", "axes fraction"),
                xytext=(3, -12),
                textcoords="offset points",
                fontsize=8,
                color="grey",
            )
    return drawn


def _fmt(value) -> str:
    return "" if value is None or value == "" else f"{float(value):.4g}"


def _markdown(output_dir: str, runs: list[_Run], plots: dict[str, str], top: int) -> str:
    multi = len(runs) > 1
    lines = ["# Distillation report", "", f"Run: `{os.path.abspath(output_dir)}`"]
    if multi:
        lines[-1] += f", {len(runs)} rounds (steps concatenated on a global step axis in the plots)"
    lines += ["", "## Final metrics", ""]
    header = (["round"] if multi else []) + ["step", *_FINAL_COLUMNS]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        train, evaluation = run.last("train"), run.last("eval")
        step = max(train.get("step", 0), evaluation.get("step", 0))
        values = [_fmt(evaluation.get(c) if c in EVAL_METRICS else train.get(c)) for c in _FINAL_COLUMNS]
        lines.append("| " + " | ".join(([run.label] if multi else []) + [str(step), *values]) + " |")

    if plots:
        lines += ["", "## Plots", ""]
        lines.append("\n\n".join(f"![{title}]({name})" for name, title in plots.items()))

    last = runs[-1]
    lines += [""]
    if not last.last_eval:
        lines.append(f"No per-example statistics: no evaluation rows in {SAMPLES_FILE} (see `track_samples`).")
    else:
        step = last.last_eval[0]["step"]
        where = f"{last.label}, step {step}" if multi else f"step {step}"
        worst = sorted(last.last_eval, key=lambda r: float(r[KD_LOSS]), reverse=True)[:top]
        lines += [f"## The {len(worst)} examples with the highest KD at the last evaluation ({where})", ""]
        lines += ["| id | tokens | kd | ce | agreement |", "|---|---|---|---|---|"]
        for r in worst:
            cells = [
                r["id"].replace("|", "\\|"),
                r["tokens"],
                _fmt(r[KD_LOSS]),
                _fmt(r[CE_LOSS]),
                _fmt(r[TEACHER_AGREEMENT]),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
