"""metrics.csv and samples.csv against the trainer's own log_history, across a resume; TensorBoard gets the same."""

import csv
import os
import threading
import time
import types

import pytest
from accelerate import Accelerator
from testing_utils import tiny_llama, variable_length_dataset, word_tokenizer
from transformers import TrainerControl, TrainerState

from hf_distill import DistillConfig, DistillTrainer, csv_files
from hf_distill.data.datasets import DistillDataCollator
from hf_distill.run.logs import EVAL_COLUMNS, METRICS_COLUMNS, TRAIN_COLUMNS, RunFilesCallback

N_EVAL = 6


def make_trainer(output_dir, eval_steps=2, **overrides):
    args = dict(
        output_dir=str(output_dir),
        use_cpu=True,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        max_steps=4,
        learning_rate=1e-3,
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=eval_steps,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=0,
        data_seed=0,
    )
    args.update(overrides)
    return DistillTrainer(
        model=tiny_llama(seed=1, hidden=32, layers=1),
        teacher_model=tiny_llama(seed=2, hidden=48, layers=2),
        args=DistillConfig(**args),
        train_dataset=with_ids(variable_length_dataset()),
        eval_dataset=with_ids(variable_length_dataset(N_EVAL, seed=3)),
        # Carries the ids through, as in the recipe pipeline: track_samples "train" needs them.
        data_collator=DistillDataCollator(word_tokenizer()),
    )


def with_ids(dataset):
    return dataset.map(lambda _, i: {"id": str(i)}, with_indices=True)


def read_csv(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def rows_of(path, split):
    return [r for r in read_csv(path)[1] if r["split"] == split]


def as_logs(rows, columns):
    """CSV rows in log_history's shape: Python writes floats with repr, so values must come back exactly."""
    return [{"step": int(r["step"]), **{c: float(r[c]) for c in ("epoch", *columns) if r[c] != ""}} for r in rows]


def history(trainer, key, columns):
    return [{k: h[k] for k in ("step", "epoch", *columns) if k in h} for h in trainer.state.log_history if key in h]


def test_metrics_csv_holds_every_log_of_the_trainer(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=6, eval_steps=3)  # 6 steps of 4 = one epoch of the 24 examples
    trainer.train()
    trainer.evaluate()  # after training: its row must reach the file without a later checkpoint to flush it

    columns, rows = read_csv(tmp_path / "metrics.csv")
    assert tuple(columns) == METRICS_COLUMNS
    train, evaluation = rows_of(tmp_path / "metrics.csv", "train"), rows_of(tmp_path / "metrics.csv", "eval")
    assert len(rows) == len(train) + len(evaluation)
    assert as_logs(train, TRAIN_COLUMNS) == history(trainer, "loss", TRAIN_COLUMNS)
    assert [r["step"] for r in train] == ["1", "2", "3", "4", "5", "6"]
    assert as_logs(evaluation, EVAL_COLUMNS) == history(trainer, "eval_loss", EVAL_COLUMNS)
    assert [r["step"] for r in evaluation] == ["3", "6", "6"]
    assert all(r[c] == "" for r in train for c in EVAL_COLUMNS)
    assert all(r[c] == "" for r in evaluation for c in (*TRAIN_COLUMNS, "tokens_per_second"))

    elapsed = [float(r["elapsed_seconds"]) for r in rows]
    assert elapsed == sorted(elapsed) and elapsed[0] > 0
    assert all(float(r["tokens_per_second"]) > 0 for r in train)
    # The counter behind tokens/s: one epoch trains on every target token of the dataset exactly once.
    targets = sum(sum(label != -100 for label in row["labels"][1:]) for row in variable_length_dataset())
    assert trainer.target_tokens_seen() == targets

    _, samples = read_csv(tmp_path / "samples.csv")
    assert [int(r["step"]) for r in samples] == [3] * N_EVAL + [6] * N_EVAL * 2
    eval_logs = history(trainer, "eval_loss", EVAL_COLUMNS)
    for step_rows, log in ((samples[:N_EVAL], eval_logs[0]), (samples[-N_EVAL:], eval_logs[-1])):
        tokens = sum(int(r["tokens"]) for r in step_rows)
        kd = sum(float(r["kd_loss"]) * int(r["tokens"]) for r in step_rows) / tokens
        assert kd == pytest.approx(log["eval_kd_loss"], rel=1e-5)


def test_metrics_csv_off(tmp_path):
    make_trainer(tmp_path, max_steps=1, metrics_csv=False).train()
    assert not (tmp_path / "metrics.csv").exists()
    assert (tmp_path / "samples.csv").exists()


def test_resume_drops_the_rows_past_the_checkpoint(tmp_path):
    """A run reached step 4 (rows written up to 4) but is resumed from checkpoint-2, as after a crash at step 4."""
    common = dict(save_strategy="steps", save_steps=2, track_samples=["eval", "train"])
    first = make_trainer(tmp_path, **common)
    first.train()
    first_rows = read_csv(tmp_path / "metrics.csv")[1]
    assert [r["step"] for r in first_rows] == ["1", "2", "2", "3", "4", "4"]
    with open(tmp_path / "metrics.csv", "a") as f:
        f.write("5,tra")  # a row the crash cut short

    resumed = make_trainer(tmp_path, **common)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))

    columns, rows = read_csv(tmp_path / "metrics.csv")
    assert tuple(columns) == METRICS_COLUMNS
    assert [(r["step"], r["split"]) for r in rows] == [
        ("1", "train"),
        ("2", "train"),
        ("2", "eval"),
        ("3", "train"),
        ("4", "train"),
        ("4", "eval"),
    ]
    assert rows[:3] == first_rows[:3]  # kept as written, not rewritten by the resumed run
    assert as_logs(rows_of(tmp_path / "metrics.csv", "train"), TRAIN_COLUMNS) == history(
        resumed, "loss", TRAIN_COLUMNS
    )
    assert as_logs(rows_of(tmp_path / "metrics.csv", "eval"), EVAL_COLUMNS) == history(
        resumed, "eval_loss", EVAL_COLUMNS
    )
    elapsed = [float(r["elapsed_seconds"]) for r in rows]
    assert elapsed == sorted(elapsed)  # the clock continues from the last row kept

    _, samples = read_csv(tmp_path / "samples.csv")
    per_step = {}
    for r in samples:
        per_step.setdefault((int(r["step"]), r["split"]), []).append(r["id"])
    assert sorted(per_step) == [(1, "train"), (2, "eval"), (2, "train"), (3, "train"), (4, "eval"), (4, "train")]
    assert all(len(ids) == 4 for (_, split), ids in per_step.items() if split == "train")
    assert all(sorted(ids) == sorted(map(str, range(N_EVAL))) for (_, s), ids in per_step.items() if s == "eval")


def test_rows_are_written_off_the_training_thread(tmp_path, monkeypatch):
    """on_log returns while the disk is stuck; on_save waits until the rows are written."""
    release = threading.Event()
    writer_threads = set()

    class SlowWriter(csv.DictWriter):
        def writerow(self, row):
            writer_threads.add(threading.current_thread())
            release.wait(10)
            return super().writerow(row)

    monkeypatch.setattr(csv_files.csv, "DictWriter", SlowWriter)
    callback = RunFilesCallback(Accelerator(cpu=True), str(tmp_path))
    args = types.SimpleNamespace(output_dir=str(tmp_path))
    state, control = TrainerState(), TrainerControl()
    callback.on_train_begin(args, state, control)
    start = time.perf_counter()
    for step in (1, 2, 3):
        state.global_step = step
        callback.on_log(args, state, control, logs={"loss": 1.0 / step, "learning_rate": 0.1, "epoch": step / 10})
    assert time.perf_counter() - start < 1
    assert threading.current_thread() not in writer_threads

    saver = threading.Thread(target=callback.on_save, args=(args, state, control))
    saver.start()
    saver.join(0.3)
    assert saver.is_alive()  # the checkpoint waits for the rows
    release.set()
    saver.join(10)
    assert [r["loss"] for r in read_csv(tmp_path / "metrics.csv")[1]] == ["1.0", "0.5", "0.3333333333333333"]
    callback.on_train_end(args, state, control)


def test_rows_reach_the_disk_before_the_checkpoint(tmp_path, monkeypatch):
    """A process killed right after writing checkpoint-N must leave every row up to step N on disk."""

    class SlowWriter(csv.DictWriter):
        def writerow(self, row):
            time.sleep(0.05)
            return super().writerow(row)

    monkeypatch.setattr(csv_files.csv, "DictWriter", SlowWriter)
    # Step 2 saves after an evaluation, step 3 only logs, step 4 saves after an evaluation and without a log.
    trainer = make_trainer(
        tmp_path, logging_steps=3, save_strategy="steps", save_steps=2, track_samples=["train", "eval"]
    )
    on_disk = {}
    save_checkpoint = trainer._save_checkpoint

    def look_then_save(*args, **kwargs):
        step = trainer.state.global_step
        samples = read_csv(tmp_path / "samples.csv")[1]
        on_disk[step] = (
            len(read_csv(tmp_path / "metrics.csv")[1]),
            sorted({(int(r["step"]), r["split"]) for r in samples}),
        )
        save_checkpoint(*args, **kwargs)

    trainer._save_checkpoint = look_then_save
    trainer.train()
    assert on_disk == {
        2: (1, [(1, "train"), (2, "eval"), (2, "train")]),
        4: (3, [(1, "train"), (2, "eval"), (2, "train"), (3, "train"), (4, "eval"), (4, "train")]),
    }


def test_a_write_error_surfaces_at_the_next_flush(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    callback = RunFilesCallback(Accelerator(cpu=True), str(blocker))
    args = types.SimpleNamespace(output_dir=str(blocker))
    state, control = TrainerState(global_step=1), TrainerControl()
    callback.on_log(args, state, control, logs={"loss": 1.0})
    with pytest.raises(OSError, match="cannot write .*metrics.csv"):
        callback.on_save(args, state, control)


def test_tensorboard_receives_the_distillation_metrics(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = tmp_path / "tb"
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(logdir))
    trainer = make_trainer(tmp_path / "run", max_steps=3, report_to=["tensorboard"])
    trainer.train()

    events = EventAccumulator(str(logdir))
    events.Reload()
    tags = events.Tags()["scalars"]
    for key, tag in (("kd_loss", "train/kd_loss"), ("ce_loss", "train/ce_loss"), ("eval_kd_loss", "eval/kd_loss")):
        assert tag in tags, tags
        logged = [(h["step"], h[key]) for h in trainer.state.log_history if key in h]
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [step for step, _ in logged]
        # TensorBoard stores float32.
        assert [s.value for s in scalars] == pytest.approx([value for _, value in logged], rel=1e-6)
    assert len(events.Scalars("train/kd_loss")) == 3
    assert os.listdir(logdir)


def test_resume_drops_the_samples_past_the_checkpoint_without_metrics_csv(tmp_path):
    """`metrics_csv: false` turns off metrics.csv only: a resumed run still writes each step of samples.csv once."""
    common = dict(save_strategy="steps", save_steps=2, track_samples=["eval", "train"], metrics_csv=False)
    make_trainer(tmp_path, **common).train()
    first = read_csv(tmp_path / "samples.csv")[1]
    assert sorted({int(r["step"]) for r in first}) == [1, 2, 3, 4]

    make_trainer(tmp_path, **common).train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert not (tmp_path / "metrics.csv").exists()
    samples = read_csv(tmp_path / "samples.csv")[1]
    # Steps 3 and 4 were written by both runs; the resumed run replaced them rather than appending a second copy.
    assert [(r["step"], r["split"], r["id"]) for r in samples] == [(r["step"], r["split"], r["id"]) for r in first]
    for resumed, original in zip(samples, first):
        assert float(resumed["kd_loss"]) == pytest.approx(float(original["kd_loss"]), rel=1e-4)
