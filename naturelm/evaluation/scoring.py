"""Scoring a predictions file: validate the rows, group them by component, run the shipped `evaluate` module of each
component's task, and collect metrics, counts, notes and bad rows into a `BeansZeroReport`."""

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .components import COMPONENTS, get_component
from .errors import EvaluationError
from .metrics import load_metric
from .predictions import BadRow, invalid_prediction_reason, read_predictions

METRIC_COLUMNS = {
    "classification": ("Accuracy", "Precision", "Recall", "F1 Score", "Top-1 Accuracy"),
    "detection": ("mAP", "F1", "Recall", "Precision"),
    "captioning": ("CIDEr", "SPICE", "SPIDEr"),
}


@dataclass
class BeansZeroReport:
    """
    The result of scoring.

    Attributes:
        metrics (`dict[str, dict[str, float | None]]`): per component (official order), the metrics of its task;
            the same layout and names as `beans_zero.evaluate.compute_metrics`, plus `CIDEr`/`SPICE`/`SPIDEr` for
            captioning (`None` = could not be computed here, see `notes`).
        num_scored (`dict[str, int]`): rows scored per component.
        bad_rows (`list[BadRow]`): rows left out, with the reason.
        notes (`dict[str, list[str]]`): per component, what was not computed and why.
        label_sets (`str`): where the candidate labels came from (`"references"` of the scored rows, or a file).
    """

    metrics: dict[str, dict[str, float | None]] = field(default_factory=dict)
    num_scored: dict[str, int] = field(default_factory=dict)
    bad_rows: list[BadRow] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=dict)
    label_sets: str = "references"

    def to_dict(self) -> dict:
        return {
            "metrics": self.metrics,
            "num_scored": self.num_scored,
            "num_bad_rows": len(self.bad_rows),
            "bad_rows": [row.to_dict() for row in self.bad_rows],
            "notes": self.notes,
            "label_sets": self.label_sets,
        }

    def write_json(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    def format_table(self, max_bad_rows: int = 20) -> str:
        """Markdown tables, one per task, then notes and bad rows."""
        lines = [
            f"BEANS-Zero: {len(self.metrics)} component(s), {sum(self.num_scored.values())} row(s) scored, "
            f"{len(self.bad_rows)} bad row(s)."
        ]
        for task, columns in METRIC_COLUMNS.items():
            names = [name for name in self.metrics if get_component(name).task == task]
            if not names:
                continue
            header = ["component", "rows", *columns]
            rows = [
                [name, str(self.num_scored[name]), *(_format(self.metrics[name].get(column)) for column in columns)]
                for name in names
            ]
            widths = [max(len(cells[i]) for cells in [header, *rows]) for i in range(len(header))]
            lines += ["", f"{task}:", ""]
            for cells in [header, ["-" * w for w in widths], *rows]:
                aligned = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
                lines.append("| " + " | ".join(aligned) + " |")
        for name, messages in self.notes.items():
            lines += [f"note ({name}): {message}" for message in messages]
        if self.bad_rows:
            lines += ["", f"{len(self.bad_rows)} bad row(s) not scored:"]
            for row in self.bad_rows[:max_bad_rows]:
                where = f"line {row.line}" if row.line is not None else ""
                who = ", ".join(x for x in (f"id {row.id}" if row.id else "", row.dataset_name or "", where) if x)
                lines.append(f"  {who}: {row.reason}")
            if len(self.bad_rows) > max_bad_rows:
                lines.append(f"  ... and {len(self.bad_rows) - max_bad_rows} more (see the metrics JSON).")
        return "\n".join(lines)


def _format(value: float | None) -> str:
    if value is None:
        return "n/a"
    return "nan" if isinstance(value, float) and math.isnan(value) else f"{value:.4f}"


def score_predictions(
    records: Iterable[dict],
    label_sets: Mapping[str, Sequence[str]] | None = None,
    spice_jar: str | os.PathLike | None = None,
    bad_rows: Iterable[BadRow] = (),
) -> BeansZeroReport:
    """
    Scores prediction records (`id`, `dataset_name`, `prediction`, `label`).

    Args:
        records (`Iterable[dict]`): the predictions; invalid ones (missing or non-string fields, unknown component,
            a repeated id, recorded errors) become bad rows and the rest is scored.
        label_sets (`Mapping[str, Sequence[str]]`, *optional*): candidate labels per component; by default each
            component's distinct references (the official behaviour).
        spice_jar (`str`, *optional*): SPICE jar for captioning (see `naturelm.evaluation.captioning`).
        bad_rows (`Iterable[BadRow]`): rows already found bad (e.g. unreadable lines), reported with the others.

    Returns:
        [`BeansZeroReport`]
    """
    report = BeansZeroReport(bad_rows=list(bad_rows), label_sets="references" if label_sets is None else "given")
    by_component: dict[str, list[dict]] = {}
    seen: dict[str, int | None] = {}
    for record in records:
        line = record.get("_line")
        record_id = record.get("id") if isinstance(record.get("id"), str) else None
        name = record.get("dataset_name") if isinstance(record.get("dataset_name"), str) else None
        reason = invalid_prediction_reason(record)
        if reason is None and record_id in seen:
            first = seen[record_id]
            reason = "repeated id" + (f" (first on line {first})" if first is not None else "")
        if reason is not None:
            report.bad_rows.append(BadRow(record_id, name, reason, line))
            continue
        seen[record_id] = line
        by_component.setdefault(name, []).append(record)

    metric_modules: dict[str, object] = {}
    for name in COMPONENTS:
        rows = by_component.get(name)
        if not rows:
            continue
        task = COMPONENTS[name].task
        if task not in metric_modules:
            metric_modules[task] = load_metric(task)
        predictions = [row["prediction"] for row in rows]
        references = [row["label"] for row in rows]
        kwargs = {"spice_jar": spice_jar} if task == "captioning" else {}
        if task != "captioning" and label_sets is not None and name in label_sets:
            kwargs["label_set"] = list(label_sets[name])
        try:
            result = metric_modules[task].compute(predictions=predictions, references=references, **kwargs)
        except ValueError as error:
            report.notes.setdefault(name, []).append(f"not scored: {error}")
            continue
        missing = result.pop("SPICE_missing", None)
        if missing:
            report.notes.setdefault(name, []).append(missing)
        report.metrics[name] = result
        report.num_scored[name] = len(rows)
    return report


def read_label_sets(path: str | os.PathLike) -> dict[str, list[str]]:
    """A JSON object `{component: [label, ...]}` (as `naturelm evaluate beans-zero` writes to `labels.json`)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise EvaluationError(f"Cannot read label sets from {path}: {error}") from error
    if not isinstance(data, dict) or not all(
        isinstance(v, list) and all(isinstance(x, str) for x in v) for v in data.values()
    ):
        raise EvaluationError(f"{path} must hold a JSON object mapping each component to a list of label strings.")
    return data


def score_file(
    path: str | os.PathLike,
    label_sets: Mapping[str, Sequence[str]] | None = None,
    spice_jar: str | os.PathLike | None = None,
) -> BeansZeroReport:
    """Reads a predictions JSONL file and scores it (see `score_predictions`)."""
    records, bad = read_predictions(path)
    return score_predictions(records, label_sets, spice_jar, bad_rows=bad)


__all__ = ["METRIC_COLUMNS", "BeansZeroReport", "read_label_sets", "score_file", "score_predictions"]
