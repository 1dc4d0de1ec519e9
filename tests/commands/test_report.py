"""`hf-distill report`: PNG plots and report.md from metrics.csv and samples.csv."""

import csv
import json
import logging
import sys

import pytest
from matplotlib.image import imread

from hf_distill.cli import main

PLOTS = ("loss.png", "ce_kd.png", "learning_rate.png", "kd_distribution.png")


def assert_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    height, width, _ = imread(path).shape
    assert height > 200 and width > 400


def test_report_plots_and_lists_the_worst_examples(workspace, capsys):
    tmp_path, recipe = workspace
    main(["train", recipe, "--eval_strategy", "steps", "--eval_steps", "2", "--logging_steps", "1"])
    out = tmp_path / "out"
    main(["report", str(out), "--top", "3"])
    assert capsys.readouterr().out.strip().endswith("report.md")

    for name in PLOTS:
        assert_png(out / "report" / name)
    # An off-policy run generates nothing: no plot of generated completions.
    assert not (out / "report" / "generation.png").exists()
    report = (out / "report" / "report.md").read_text()
    for name in PLOTS:
        assert f"]({name})" in report

    with open(out / "samples.csv") as f:
        last = {r["id"]: r for r in csv.DictReader(f) if r["step"] == "4"}  # evaluated twice at step 4: same values
    worst = sorted(last.values(), key=lambda r: float(r["kd_loss"]), reverse=True)[:3]
    assert "## The 3 examples with the highest KD at the last evaluation (step 4)" in report
    table = report.split("| id | tokens | kd | ce | agreement |\n|---|---|---|---|---|\n")[1].splitlines()
    assert [line.split(" | ")[0].lstrip("| ") for line in table] == [r["id"] for r in worst]
    assert table[0].split(" | ")[2] == f"{float(worst[0]['kd_loss']):.4g}"

    eval_results = json.loads((out / "eval_results.json").read_text())
    final = next(line for line in report.splitlines() if line.startswith("| 4 |"))
    assert f"| {eval_results['eval_kd_loss']:.4g} |" in final


def write_metrics(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["step", "split", "loss", "ce_loss", "kd_loss", "learning_rate", "eval_loss"])
        writer.writeheader()
        writer.writerows(rows)


def test_report_covers_every_round(tmp_path):
    for k in (1, 2):
        write_metrics(
            tmp_path / f"round-{k}",
            [
                {"step": s, "split": "train", "loss": 2 / (s + k), "ce_loss": 3, "kd_loss": 1, "learning_rate": 0.1}
                for s in (1, 2, 3)
            ]
            + [{"step": 3, "split": "eval", "eval_loss": 1.5 / k}],
        )
    main(["report", str(tmp_path)])
    report = (tmp_path / "report" / "report.md").read_text()
    assert "2 rounds" in report
    assert "| round 1 | 3 | 0.5 |" in report and "| round 2 | 3 | 0.4 |" in report
    assert "No per-example statistics" in report  # no samples.csv: no histogram either
    assert not (tmp_path / "report" / "kd_distribution.png").exists()
    for name in PLOTS[:3]:
        assert_png(tmp_path / "report" / name)


def test_report_without_metrics_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["report", str(tmp_path)])
    assert info.value.code == 2
    assert capsys.readouterr().err == (
        f"hf-distill: error: no metrics to report ({tmp_path}): no metrics.csv in it or in its round-<k>/ folders; "
        "train with metrics_csv: true (the default)\n"
    )


def test_report_without_matplotlib_says_what_to_install(tmp_path, monkeypatch, capsys):
    write_metrics(tmp_path, [{"step": 1, "split": "train", "loss": 1.0}])
    for name in ("matplotlib", "matplotlib.backends", "matplotlib.backends.backend_agg", "matplotlib.figure"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(SystemExit):
        main(["report", str(tmp_path)])
    assert capsys.readouterr().err.strip() == (
        "hf-distill: error: matplotlib is not installed (hf-distill report): it draws the plots; pip install "
        "hf_distill[plots]"
    )


def test_report_skips_unreadable_rows_with_a_warning_naming_their_lines(tmp_path, caplog):
    """A damaged metrics.csv (a loss that is no number, a step cut off): the report is made from the other rows, and
    one warning names the file and the lines left out."""
    row = {"split": "train", "ce_loss": 2, "kd_loss": 1, "learning_rate": 0.1}
    write_metrics(tmp_path, [{**row, "step": s, "loss": 1 / s} for s in (1, 2, 3)])
    with open(tmp_path / "metrics.csv", "a") as f:
        f.write("4,train,not-a-number,2,1,0.1,\n5,tra\n")
    with caplog.at_level(logging.WARNING, logger="hf_distill.run.csv_writer"):
        main(["report", str(tmp_path)])
    assert [r.getMessage() for r in caplog.records if r.name == "hf_distill.run.csv_writer"] == [
        f"{tmp_path / 'metrics.csv'}: skipping 2 rows that cannot be read (lines 5, 6)"
    ]
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| 3 | 0.3333 |" in report  # the last readable step is the final one
