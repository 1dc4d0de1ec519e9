"""atomic_write: a file or folder appears whole or not at all, whatever a killed or failed write left behind."""

import json
import os

import pytest

from hf_distill.run.atomic_write import atomic_write, temporary_path, write_json_atomically
from hf_distill.run.csv_writer import truncate_csv


def write_text(text):
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)

    return write


def test_a_file_replaces_the_old_one_whole(tmp_path):
    path = str(tmp_path / "file.txt")
    atomic_write(path, write_text("old"))
    atomic_write(path, write_text("new"))
    assert open(path).read() == "new"
    assert os.listdir(tmp_path) == ["file.txt"]


def test_a_folder_appears_whole(tmp_path):
    path = tmp_path / "folder"

    def write(tmp):
        os.makedirs(os.path.join(tmp, "sub"))
        for name in ("a", "sub/b"):
            with open(os.path.join(tmp, name), "w") as f:
                f.write(name)

    atomic_write(str(path), write)
    assert (path / "a").read_text() == "a" and (path / "sub" / "b").read_text() == "sub/b"
    assert os.listdir(tmp_path) == ["folder"]


@pytest.mark.parametrize("leftover", ["file", "folder"])
@pytest.mark.parametrize("target", ["file", "folder"])
def test_a_leftover_of_a_killed_write_is_replaced(tmp_path, leftover, target):
    path = str(tmp_path / "out")
    tmp = temporary_path(path)
    # What a process killed mid-write leaves: the temporary name, half written.
    if leftover == "folder":
        os.makedirs(tmp)
        open(os.path.join(tmp, "partial"), "w").close()
    else:
        with open(tmp, "w") as f:
            f.write("half")

    def write_folder(tmp):
        os.makedirs(tmp)
        with open(os.path.join(tmp, "whole"), "w") as f:
            f.write("whole")

    atomic_write(path, write_text("whole") if target == "file" else write_folder)
    assert os.listdir(tmp_path) == ["out"]
    assert open(path if target == "file" else os.path.join(path, "whole")).read() == "whole"
    if target == "folder":
        assert os.listdir(path) == ["whole"]


def test_a_failed_write_leaves_the_old_content_and_no_leftover(tmp_path):
    path = str(tmp_path / "file.txt")
    atomic_write(path, write_text("old"))

    def fail(tmp):
        write_text("half")(tmp)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, fail)
    assert open(path).read() == "old"
    assert os.listdir(tmp_path) == ["file.txt"]


def test_json_that_cannot_be_written_leaves_no_file(tmp_path):
    path = str(tmp_path / "marker.json")
    # json.dump streams: the keys before the bad value would reach a file written in place.
    with pytest.raises(TypeError):
        write_json_atomically(path, {"round": 1, "metrics": object()})
    assert os.listdir(tmp_path) == []
    write_json_atomically(path, {"round": 1})
    assert json.loads(open(path).read()) == {"round": 1}


def test_truncate_csv_replaces_the_file_only_when_rows_are_dropped(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("step,split\n1,train\n2,train\n3")  # the last row cut short by a crash
    inode = os.stat(path).st_ino
    assert truncate_csv(str(path), 5) == {"step": "2", "split": "train"}
    assert path.read_text().splitlines() == ["step,split", "1,train", "2,train"]
    assert os.stat(path).st_ino != inode  # replaced by a rename, never rewritten in place
    inode = os.stat(path).st_ino
    assert truncate_csv(str(path), 2) == {"step": "2", "split": "train"}
    assert os.stat(path).st_ino == inode  # nothing to drop: left as it is
    assert truncate_csv(str(path), 1) == {"step": "1", "split": "train"}
    assert path.read_text().splitlines() == ["step,split", "1,train"]
    assert os.listdir(tmp_path) == ["metrics.csv"]
