"""The per-image records of `hiseg evaluate`: one whole file per scored batch, never appended.

Every batch's records (one JSON object a line, one line per image) are written as ONE new
file `results/p<process>-<first index>.jsonl` of the output folder: flushed to disk under a
temporary name, then renamed into place (`files.atomic_path`; on an object store the file is
uploaded as one object, which appears whole). A run killed at any instant (or a power cut)
therefore leaves only complete files (and, locally, a hidden temporary `.*.part` file that
is never read), and resuming is listing and reading them all. Nothing is appended, which
object stores cannot do, so the same code serves local folders and `gs://` / `s3://`
(`files.as_path`). The first index names a file uniquely: every image is recorded once, by
the one process that owns it. A file that does not hold JSON records is corruption, not an
interrupted write: reading it raises ResultFilesError naming it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hiseg_jax.files import AnyPath, atomic_path

RESULTS = "results"  # the folder of the batch files in the output folder
READERS = 16  # files read at once (on an object store, one request each)


class ResultFilesError(ValueError):
    """A batch file whose lines are not JSON records with an image index."""


def batch_name(process: int, first: int) -> str:
    """The file name of a batch of process `process` whose smallest image index is `first`."""
    return f"p{process}-{first:08d}.jsonl"


def write_batch(out: AnyPath, process: int, records: Sequence[dict[str, Any]]) -> AnyPath:
    """Write `records` (JSON-serialisable, no NaN, each with an int "index") as one new
    batch file of `out`, atomically; returns its path."""
    folder = out / RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / batch_name(process, min(r["index"] for r in records))
    text = "".join(json.dumps(r, allow_nan=False, separators=(",", ":")) + "\n" for r in records)
    with atomic_path(path) as partial, open(partial, "w", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    return path


def batch_files(out: AnyPath) -> list[AnyPath]:
    """The batch files of `out`, sorted by name (none when it has no results folder)."""
    return sorted((out / RESULTS).glob("p*.jsonl"), key=lambda path: path.name)


def read_records(out: AnyPath) -> list[dict[str, Any]]:
    """The records of every batch file of `out`, one per image index, sorted by index."""
    paths = batch_files(out)
    with ThreadPoolExecutor(READERS) as pool:
        texts = list(pool.map(lambda path: path.read_text(encoding="utf-8"), paths))
    records: dict[int, dict[str, Any]] = {}
    for path, text in zip(paths, texts, strict=True):
        for record in _parse(path, text):
            records.setdefault(record["index"], record)
    return [records[index] for index in sorted(records)]


def _parse(path: AnyPath, text: str) -> list[dict[str, Any]]:
    """The records of one batch file's text."""
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ResultFilesError(f"{path}: line {number} is not valid JSON ({err})") from err
        if not isinstance(record, dict) or not isinstance(record.get("index"), int):
            raise ResultFilesError(f"{path}: line {number} is not a record with an image index")
        records.append(record)
    return records
