"""
The predictions file: JSON lines `{"id", "dataset_name", "prediction", "label"}`, one per dataset row, written a
batch at a time (one write, flushed and synced) so that a killed run leaves whole lines, at most one cut-off last
line, which `completed_ids` removes before a resumed run appends. Rows that could not be run are recorded as
`{"id", "dataset_name", "error"}` so that they are reported, and not retried, by a resumed run.
"""

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

from .components import COMPONENTS
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
        JSON objects.
    """
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"Predictions file {path} does not exist.")
    records, bad = [], []
    with path.open(encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                bad.append(BadRow(None, None, f"not valid JSON ({error.msg})", number))
                continue
            if not isinstance(record, dict):
                bad.append(BadRow(None, None, f"not a JSON object (got {type(record).__name__})", number))
                continue
            records.append({**record, "_line": number})
    return records, bad


def completed_ids(path: str | os.PathLike) -> set[str]:
    """
    For resuming: removes a last line cut off by a killed run, and returns the ids the file already holds (answered
    or recorded as errors). A missing file holds none.
    """
    path = Path(path)
    if not path.exists():
        return set()
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as file:
            file.truncate(data.rfind(b"\n") + 1)
    records, bad = read_predictions(path)
    if bad:
        raise EvaluationError(
            f"{path} has {len(bad)} unreadable line(s) before its end (first: line {bad[0].line}, {bad[0].reason}); "
            "it was not written by an interrupted run. Fix or remove it."
        )
    return {record_id for record_id in map(_record_id, records) if record_id is not None}


class PredictionsWriter:
    """Appends records to a predictions file, one `write` + flush + fsync per call, so that lines are never
    interleaved or lost once `write` returns."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, records: Iterable[dict]) -> None:
        text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
        if text:
            self._file.write(text)
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "PredictionsWriter":
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, traceback: TracebackType | None) -> None:
        self.close()


__all__ = [
    "PREDICTION_KEYS",
    "BadRow",
    "PredictionsWriter",
    "completed_ids",
    "invalid_prediction_reason",
    "read_predictions",
]
