"""Reading a run's raw dataset: a local file, a folder of split files, a `save_to_disk` folder, or a hub dataset.

A file that cannot be read is named in a one-line error (with the line of a broken JSON line), not left to the
`datasets` builder, whose errors (a `StopIteration` for an empty file, an Arrow parse error without a file name)
do not say which file is wrong."""

import glob
import json
import os

import pyarrow.parquet as pq
from datasets import DatasetDict, load_dataset, load_from_disk
from datasets import config as datasets_config

from ..arguments.script_arguments import DataArguments
from ..user_errors import UserInputError

# Extension -> datasets builder, for local files.
FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text"}


def split_files(folder: str) -> dict[str, list[str]]:
    """Local split files `<split>.<ext>` (or `<split>-*.<ext>` shards) in `folder`, by split name."""
    files: dict[str, list[str]] = {}
    for path in sorted(glob.glob(os.path.join(folder, "*"))):
        stem, ext = os.path.splitext(os.path.basename(path))
        if ext in FILE_BUILDERS:
            files.setdefault(stem.split("-")[0], []).append(path)
    return files


def _first_line(err: BaseException) -> str:
    text = " ".join(line.strip() for line in str(err).strip().splitlines() if line.strip())
    return text or type(err).__name__


def _json_error(path: str, text: str) -> UserInputError | None:
    """The error of the first broken line of a JSON-lines file, or of a JSON document; None if it parses."""
    try:
        json.loads(text)
        return None
    except json.JSONDecodeError as whole:
        document_error = whole
    lines = text.splitlines()
    first = next((line for line in lines if line.strip()), "")
    try:
        json.loads(first)
    except json.JSONDecodeError:
        # Not JSON lines (a document over several lines): the document's own position.
        line = document_error.lineno
        return UserInputError("broken JSON", f"{path}:{line}", document_error.msg, "fix the file at that line")
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                json.loads(line)
            except json.JSONDecodeError as err:
                return UserInputError(
                    "broken JSON line", f"{path}:{number}", err.msg, "fix or delete that line (one JSON object a line)"
                )
    return None


def _file_error(path: str, thorough: bool) -> UserInputError | None:
    """Why the data file `path` cannot be read, from the file alone (None if nothing is found). Without `thorough`
    only what costs no pass over the data: that it opens, is not empty, and (Parquet) has a footer."""
    ext = os.path.splitext(path)[1]
    try:
        if ext == ".parquet":
            pq.ParquetFile(path)
            return None
        with open(path, "rb") as f:
            raw = f.read() if thorough else f.read(1)
    except OSError as err:
        return UserInputError("data file cannot be read", path, err.strerror or _first_line(err), "fix its path")
    except Exception as err:  # pyarrow raises ArrowInvalid (and others) for a file that is no Parquet
        return UserInputError("bad Parquet file", path, _first_line(err), "write it again, or remove it")
    if not raw.strip() and (thorough or not raw):
        return UserInputError("empty data file", path, "it holds no example", "fill it, or remove it")
    if thorough and ext in (".json", ".jsonl"):
        try:
            return _json_error(path, raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            return UserInputError("data file is not UTF-8 text", path, _first_line(err), "save it as UTF-8")
    return None


def _load_files(builder: str, files: dict[str, list[str]], name: str) -> DatasetDict:
    """`load_dataset(builder, data_files=files)`, after the cheap checks of every file; if the builder fails, each
    file is read through to name the bad one (and line)."""
    paths = [path for split in files.values() for path in split]
    for path in paths:
        error = _file_error(path, thorough=False)
        if error is not None:
            raise error
    try:
        return load_dataset(builder, data_files=files)
    except Exception as err:  # the builders raise many types, none naming the file
        for path in paths:
            error = _file_error(path, thorough=True)
            if error is not None:
                raise error from None
        raise UserInputError(
            "dataset cannot be read", f"dataset_name={name!r}", _first_line(err), "check its files' format"
        ) from None


def _load_hub_dataset(args: DataArguments) -> DatasetDict:
    try:
        return load_dataset(args.dataset_name, args.dataset_config)
    except Exception as err:  # not found, no network, gated: each a different type
        if datasets_config.HF_HUB_OFFLINE:
            raise UserInputError(
                "hub dataset unavailable offline",
                f"dataset_name={args.dataset_name!r}",
                "HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set and the dataset is not in the local cache",
                "unset them to download it once, or set dataset_name to a local file or folder",
            ) from None
        raise UserInputError(
            "hub dataset cannot be loaded",
            f"dataset_name={args.dataset_name!r}",
            _first_line(err),
            "check the name and dataset_config, your network and your access to it",
        ) from None


def load_raw_dataset(args: DataArguments) -> DatasetDict:
    """The dataset named by `args.dataset_name`: a local file, a local folder, or a hub dataset."""
    name = args.dataset_name
    if os.path.isfile(name):
        ext = os.path.splitext(name)[1]
        if ext not in FILE_BUILDERS:
            raise UserInputError(
                "unsupported data file type", f"dataset_name={name!r}", f"{ext!r} files cannot be read",
                f"use one of {', '.join(sorted(FILE_BUILDERS))}",
            )  # fmt: skip
        return _load_files(FILE_BUILDERS[ext], {"train": [name]}, name)
    if os.path.isdir(name):
        if os.path.exists(os.path.join(name, "dataset_dict.json")):
            return load_from_disk(name)
        files = split_files(name)
        if files:
            builders = {FILE_BUILDERS[os.path.splitext(p)[1]] for paths in files.values() for p in paths}
            if len(builders) > 1:
                raise UserInputError(
                    "data folder mixes file types", f"dataset_name={name!r}", f"it holds {sorted(builders)} files",
                    "keep the files of one type",
                )  # fmt: skip
            return _load_files(builders.pop(), files, name)
        return load_dataset(name, args.dataset_config)
    if name.startswith((".", "/")) or name.endswith(tuple(FILE_BUILDERS)):
        raise UserInputError(
            "dataset not found", f"dataset_name={name!r}", "no such file or folder", "fix the path"
        )  # fmt: skip
    return _load_hub_dataset(args)
