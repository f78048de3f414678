"""
The predictions file: JSON lines `{"id", "dataset_name", "prediction", "label"}`, one per dataset row, written a
batch at a time (one write, flushed and synced, then journaled in `predictions.jsonl.progress`) so that a resumed
run cuts the file back to the last journaled batch and skips its ids. Rows that could not be run are recorded as
`{"id", "dataset_name", "error"}` so that they are reported, and not retried, by a resumed run.
"""

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

from .components import COMPONENTS
from ..journal import Journal, UsageError, existing_output_check
from .errors import EvaluationError

PREDICTION_KEYS = ("id", "dataset_name", "prediction", "label")


@dataclass(frozen=True)
class BadRow:
    """A row that is not scored, with the reason. `line` is its line number in a predictions file, if any."""

    id: str | None
    dataset_name: str | None
    reason: str
    line: int | None = None

    def to_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if value is not None}


def _describe(value) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def invalid_prediction_reason(record: dict) -> str | None:
    """Why a predictions record cannot be scored, or `None` when it can."""
    if "error" in record:
        return f"no prediction: {record['error']}"
    missing = [key for key in PREDICTION_KEYS if record.get(key) is None]
    if missing:
        return f"missing {', '.join(missing)}"
    for key in PREDICTION_KEYS:
        if not isinstance(record[key], str):
            return f"{key} is not a string (got {_describe(record[key])})"
    if record["dataset_name"] not in COMPONENTS:
        return f"unknown component {record['dataset_name']!r}"
    return None


def _record_id(record: dict) -> str | None:
    value = record.get("id")
    return value if isinstance(value, str) else (None if value is None else str(value))


def read_predictions(path: str | os.PathLike) -> tuple[list[dict], list[BadRow]]:
    """
    Reads a predictions JSONL file.

    Returns:
        `tuple[list[dict], list[BadRow]]`: the records (each with its 1-based `"_line"`), and the lines that are not
        JSON objects (or not UTF-8), each with its line number.
    """
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"Predictions file {path} does not exist.")
    records, bad = [], []
    with path.open("rb") as file:
        for number, raw in enumerate(file, 1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as error:
                bad.append(BadRow(None, None, f"not UTF-8 (byte {raw[error.start]:#04x} at column {error.start + 1})",
                                  number))
                continue
            except json.JSONDecodeError as error:
                bad.append(BadRow(None, None, f"not valid JSON ({error.msg})", number))
                continue
            except RecursionError:
                bad.append(BadRow(None, None, "not valid JSON (nested too deeply)", number))
                continue
            if not isinstance(record, dict):
                bad.append(BadRow(None, None, f"not a JSON object (got {type(record).__name__})", number))
                continue
            records.append({**record, "_line": number})
    return records, bad


class PredictionsWriter:
    """Appends records to a predictions file, one `write` + flush + fsync per call, then journals the ids written
    (`naturelm.journal`: the byte offset after them), so that lines are never interleaved or lost once `write` returns
    and a resumed run cuts off a batch that was written but not journaled. `done` holds the journaled ids."""

    def __init__(self, path: str | os.PathLike, settings: dict, resume: bool = False, overwrite: bool = False) -> None:
        self.path = Path(path)
        try:
            existing_output_check(self.path, resume, overwrite)
        except (UsageError, FileExistsError) as error:
            raise EvaluationError(str(error).replace("--output", "--output-dir")) from None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._journal = Journal(self.path, settings, resume)
        except UsageError as error:
            raise EvaluationError(str(error)) from None
        self.done = {record_id for entry in self._journal.entries for record_id in entry["ids"]}
        offset = self._journal.entries[-1]["offset"] if self._journal.entries else 0
        try:
            if self.path.exists() and self.path.stat().st_size < offset:
                raise EvaluationError(f"{self.path} holds less than its journal says; rerun with --overwrite.")
            self._file = self.path.open("ab")
            self._file.truncate(offset)
        except BaseException:
            self._journal.close()
            raise

    def write(self, records: Iterable[dict]) -> None:
        records = list(records)
        text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
        if text:
            self._file.write(text.encode())
            self._file.flush()
            os.fsync(self._file.fileno())
            self._journal.record({"ids": [r["id"] for r in records], "offset": self._file.tell()})

    def close(self) -> None:
        self._file.close()
        self._journal.close()

    def __enter__(self) -> "PredictionsWriter":
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, traceback: TracebackType | None) -> None:
        self.close()


__all__ = [
    "PREDICTION_KEYS",
    "BadRow",
    "PredictionsWriter",
    "invalid_prediction_reason",
    "read_predictions",
]
