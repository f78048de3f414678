"""Folder runs over long recordings: windows of all files batched together, one row per window, written per file as
it finishes, resumable after a kill, a failed row (with the reason) for every bad file."""

import base64
import csv
import io
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from audio_naturelm import AudioError, audio_info
from .engine import Recording, Task, build_prompt, generation_task, label_task, run_recordings
from .options import FORMATS
from .journal import Journal, UsageError, check_output_path, existing_output_check, output_error

EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".txt": "raven", ".tsv": "raven",
              ".parquet": "parquet", ".npz": "npz"}
INFER_FIELDS = ("file", "start", "end", "answer", "probabilities", "error")
EMBED_FIELDS = ("file", "start", "end", "llm_embedding", "beats_embedding", "error")
CSV_COLUMNS = list(INFER_FIELDS)
RAVEN_COLUMNS = ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
                 "High Freq (Hz)", "Begin File", "File Offset (s)", "answer", "probabilities", "error"]
TABLE_FORMATS = ("parquet", "npz")  # written whole from the journal's rows when the run closes


@dataclass
class Summary:
    files: int = 0
    windows: int = 0
    failed: int = 0
    audio_seconds: float = 0.0
    seconds: float = 0.0

    def __str__(self) -> str:
        rate = self.audio_seconds / self.seconds if self.seconds else 0.0
        return (f"{self.files} files, {self.windows} windows, {self.failed} failed, "
                f"{self.audio_seconds:.1f} s of audio in {self.seconds:.1f} s ({rate:.1f} audio-s/s)")


def output_format(output: str | None, fmt: str | None, allowed: tuple[str, ...] = FORMATS) -> str:
    """The format of a run: `--format`, else the `--output` extension (JSON lines on standard output). An extension
    that names no format, or another format than `--format`, is a usage error: a file must hold what its name says."""
    suffix = Path(output).suffix.lower() if output else ""
    guessed = EXTENSIONS.get(suffix)
    if output and guessed is None and fmt is None:
        raise UsageError(f"--output {output}: unknown extension {suffix or '(none)'!r}; use one of "
                         f"{', '.join(s for s, f in EXTENSIONS.items() if f in allowed)}, or give --format.")
    if fmt and guessed and fmt != guessed:
        raise UsageError(f"--format {fmt} does not match --output {output} (a {guessed} name).")
    chosen = fmt or guessed or "jsonl"
    if chosen not in allowed:
        raise UsageError(f"--output {output}: {chosen} is not an output of this command; use one of "
                         f"{', '.join(allowed)}.")
    if chosen in TABLE_FORMATS and not output:
        raise UsageError(f"--format {chosen} needs --output (it cannot stream to standard output).")
    return chosen


def file_key(path: Path | str) -> str:
    """What identifies a file across runs: its resolved absolute path (a URL as it is), so that the same folder
    spelled relative or absolute resumes the same run."""
    text = str(path)
    return text if "://" in text else str(Path(text).resolve())


def file_records(path: Path | str, rows: list[dict], error: str | None, fields: tuple[str, ...] = INFER_FIELDS
                 ) -> list[dict]:
    """One file's records with the same `fields` in every format: one per window, or one carrying the `error` of a
    bad file (its other fields None). `answer` is the generated text, or the best label of `probabilities`."""
    if error is not None:
        return [{**dict.fromkeys(fields), "file": str(path), "error": error}]
    records = []
    for row in rows:
        values = {**row, "file": str(path), "error": None}
        if "labels" in row:
            values["answer"], values["probabilities"] = row["labels"][0], dict(zip(row["labels"], row["scores"]))
        elif "text" in row:
            values["answer"] = row["text"]
        records.append({field: values.get(field) for field in fields})
    return records


def _cell(value) -> str:
    if value is None:
        return ""
    return json.dumps(value, ensure_ascii=False) if isinstance(value, dict) else str(value)


def _raven_cell(value) -> str:
    """Raven reads tabs and line breaks as cell and row ends, and knows no quoting: they become spaces."""
    return " ".join(_cell(value).replace("\r", "\n").replace("\t", "\n").split("\n"))


def render_records(fmt: str, records: list[dict], first_selection: int = 1, elapsed: float = 0.0) -> str:
    """Records as the text the format's file holds: JSON lines, CSV (quoted by the csv module), or Raven rows
    numbered from `first_selection`, whose Begin/End Time count from the start of the first file of a multi-file
    table (`elapsed`: the seconds of the files before) and whose File Offset counts from the start of Begin File."""
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if fmt == "csv":
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows([[_cell(r[c]) for c in CSV_COLUMNS] for r in records])
        return buffer.getvalue()
    if fmt == "raven":
        lines = []
        for selection, r in enumerate(records, start=first_selection):
            start, end = r["start"] or 0.0, r["end"] or 0.0
            cells = [selection, "Spectrogram 1", 1, round(elapsed + start, 6), round(elapsed + end, 6), 0, 8000,
                     Path(r["file"]).name, start, r["answer"], r["probabilities"], r["error"]]
            lines.append("\t".join(map(_raven_cell, cells)) + "\n")
        return "".join(lines)
    raise ValueError(f"Unknown text format {fmt!r}; choose one of jsonl, csv, raven.")


def table_header(fmt: str) -> str:
    """The header line of a text format (none for JSON lines)."""
    columns = {"csv": CSV_COLUMNS, "raven": RAVEN_COLUMNS}.get(fmt)
    return "" if columns is None else ("," if fmt == "csv" else "\t").join(columns) + "\n"


def format_table(path: Path, rows: list[dict], fmt: str, error: str | None = None) -> str:
    """A whole table for one recording (header included), byte for byte what `naturelm infer --format FMT` writes
    for it alone: e.g. a Raven Pro selection table to download from an app."""
    return table_header(fmt) + render_records(fmt, file_records(path, rows, error))


def _encode(record: dict) -> dict:
    """A record as JSON for the journal (embeddings as base64 float32)."""
    return {k: {"float32": base64.b64encode(np.asarray(v, "<f4").tobytes()).decode()} if isinstance(v, np.ndarray)
            else v for k, v in record.items()}


def _decode(record: dict) -> dict:
    return {k: np.frombuffer(base64.b64decode(v["float32"]), "<f4") if isinstance(v, dict) and "float32" in v else v
            for k, v in record.items()}


def write_table(records: list[dict], fmt: str, fields: tuple[str, ...], output: Path) -> None:
    """Parquet (any fields; `probabilities` as a map, embeddings as float32 lists) or `.npz` (embeddings of the good
    windows stacked, with their `path`/`start`/`end`), written beside `output` and moved over it."""
    temporary = output.with_name(output.name + ".tmp")
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        types = {"file": pa.string(), "start": pa.float64(), "end": pa.float64(), "answer": pa.string(),
                 "probabilities": pa.map_(pa.string(), pa.float64()), "error": pa.string(),
                 "llm_embedding": pa.list_(pa.float32()), "beats_embedding": pa.list_(pa.float32())}
        schema = pa.schema([(field, types[field]) for field in fields])
        columns = {field: [r[field] for r in records] for field in fields}
        if "probabilities" in columns:
            columns["probabilities"] = [None if p is None else list(p.items()) for p in columns["probabilities"]]
        with open(temporary, "wb") as handle:
            pq.write_table(pa.table(columns, schema=schema), handle)
    else:
        good = [r for r in records if r["error"] is None]
        with open(temporary, "wb") as handle:
            np.savez(
                handle,
                path=np.array([r["file"] for r in good], dtype=str),  # `file` is taken by np.savez itself
                start=np.array([r["start"] for r in good], dtype=np.float64),
                end=np.array([r["end"] for r in good], dtype=np.float64),
                **{key: np.stack([r[key] for r in good]) if good else np.zeros((0, 0), np.float32)
                   for key in ("llm_embedding", "beats_embedding")},
            )
    os.replace(temporary, output)


class ResultWriter:
    """The one writer of results, to standard output or to `output` with its journal (`naturelm.journal`): text
    formats are appended and synced file by file, the journal holding the byte offset after each file's rows (so
    `--resume` cuts off a half-written file and skips finished ones); Parquet and `.npz` keep each file's rows in
    the journal and are written whole when the writer closes (also when a run is interrupted).

    Args:
        settings: the run's settings, recorded in the journal; `--resume` refuses other ones.
        fields: `INFER_FIELDS` or `EMBED_FIELDS`.
    """

    def __init__(self, output: Path | None, fmt: str, resume: bool = False, overwrite: bool = False,
                 settings: dict | None = None, fields: tuple[str, ...] = INFER_FIELDS):
        self.fmt, self.output, self.fields = fmt, output, fields
        self.selection, self.elapsed, self.done = 0, 0.0, set()
        self.records: list[dict] = []
        self.handle, self.journal = None, None
        if output is None:
            self.handle = sys.stdout
            self.handle.write(table_header(fmt))
            return
        check_output_path(output)
        existing_output_check(output, resume, overwrite)
        self.journal = Journal(output, {"format": fmt, "fields": list(fields), **(settings or {})}, resume)
        try:
            self._open()
        except OSError as error:
            self.journal.close()
            raise output_error(error, output) from None
        except BaseException:
            self.journal.close()
            raise

    def _open(self) -> None:
        entries = self.journal.entries
        self.done = {entry["file"] for entry in entries}
        last = entries[-1] if entries else {}
        self.selection, self.elapsed = last.get("selection", 0), last.get("elapsed", 0.0)
        if self.fmt in TABLE_FORMATS:
            self.records = [_decode(r) for entry in entries for r in entry["records"]]
            return
        offset = last.get("offset")
        if offset is None:
            self.handle = open(self.output, "wb")
            self._write(table_header(self.fmt))
            return
        size = self.output.stat().st_size if self.output.is_file() else -1
        if size < offset:
            raise UsageError(f"{self.output} holds less than its journal says ({max(size, 0)} of {offset} bytes); "
                             "rerun with --overwrite.")
        self.handle = open(self.output, "r+b")
        self.handle.truncate(offset)
        self.handle.seek(offset)

    def _write(self, text: str) -> None:
        try:
            if self.handle is sys.stdout:
                self.handle.write(text)
                self.handle.flush()
                return
            self.handle.write(text.encode())
            self.handle.flush()
            os.fsync(self.handle.fileno())
        except OSError as error:
            raise output_error(error, self.output or "standard output") from None

    def write_file(self, path: Path | str, rows: list[dict], error: str | None) -> None:
        records = file_records(path, rows, error, self.fields)
        entry = {"file": file_key(path)}
        if self.fmt in TABLE_FORMATS:
            self.records += records
            entry["records"] = [_encode(r) for r in records]
        else:
            self._write(render_records(self.fmt, records, self.selection + 1, self.elapsed))
            self.selection += len(records)
            self.elapsed = round(self.elapsed + (records[-1]["end"] or 0.0), 6)
            if self.journal is None:
                return
            entry.update(offset=self.handle.tell(), selection=self.selection, elapsed=self.elapsed)
        self.journal.record(entry)
        self.done.add(entry["file"])

    def close(self) -> None:
        """Closes the output (writing a Parquet / `.npz` table from every finished file) and releases the lock."""
        if self.journal is None:
            return
        try:
            if self.fmt in TABLE_FORMATS:
                write_table(self.records, self.fmt, self.fields, self.output)
            elif self.handle is not None:
                self.handle.close()
        except OSError as error:
            raise output_error(error, self.output) from None
        finally:
            self.journal.close()


class MemoryWriter:
    """Keeps each file's rows (or its error) in memory instead of writing them: `run(..., writer=MemoryWriter())`
    for apps and notebooks that show or format the results themselves."""

    def __init__(self) -> None:
        self.done: set[str] = set()
        self.results: dict[str, tuple[list[dict], str | None]] = {}

    def write_file(self, path: Path | str, rows: list[dict], error: str | None) -> None:
        self.results[str(path)] = (rows, error)

    def close(self) -> None:
        pass


def make_task(labels: list[str] | None = None, **generate_kwargs) -> Task:
    """What `naturelm infer` asks of each window: scores over `labels` when given, else a generated answer."""
    return label_task(labels) if labels else generation_task(**generate_kwargs)


def pending_files(files: list, writer: ResultWriter | MemoryWriter) -> list:
    """The files a run still has to do: those the writer has not finished (`--resume`), by resolved path."""
    return [f for f in files if file_key(f) not in writer.done]


class RunProgress:
    """The progress bar (audio seconds) and the `Summary` of a run, fed as windows are answered and as each finished
    file goes to the writer; shared by local and Ray runs so both report alike."""

    def __init__(self, files: list, writer: ResultWriter | MemoryWriter, progress: bool = True):
        self.writer, self.summary, self.started = writer, Summary(), time.perf_counter()
        durations = [_duration(f) for f in files]
        total = None if None in durations else round(sum(durations), 1)
        self.bar = tqdm(total=total, unit="audio-s", disable=not progress, file=sys.stderr)

    def answered(self, seconds: float) -> None:
        self.bar.update(round(seconds, 1))

    def write_file(self, path, rows: list[dict], error: str | None) -> None:
        self.writer.write_file(path, rows, error)
        self.summary.files += 1
        self.summary.failed += error is not None
        if error is None:
            self.summary.windows += len(rows)
            self.summary.audio_seconds += rows[-1]["end"]

    def close(self) -> Summary:
        self.bar.close()
        self.summary.seconds = time.perf_counter() - self.started
        return self.summary


def run(
    model,
    processor,
    files: list[Path],
    writer: ResultWriter | MemoryWriter,
    query: str,
    labels: list[str] | None = None,
    window_seconds: float = 10.0,
    hop_seconds: float | None = None,
    batch_size: int = 8,
    progress: bool = True,
    **generate_kwargs,
) -> Summary:
    """Runs every window of every file through the engine (`run_task`) with the query's prompt: generated answers,
    or scores over `labels`."""
    task = make_task(labels, **generate_kwargs)
    return run_task(model, processor, files, writer, task, build_prompt(processor, query), window_seconds,
                    hop_seconds, batch_size, progress)


def run_task(model, processor, files: list[Path], writer: ResultWriter | MemoryWriter, task: Task,
             prompt: str = "", window_seconds: float = 10.0, hop_seconds: float | None = None,
             batch_size: int = 8, progress: bool = True) -> Summary:
    """Runs `task` on every window of the files the writer has not finished (`run_recordings`: read ahead in the
    background, batched across files) and writes each file's rows once all its windows are answered (in order), or a
    failed row when the file is bad. `naturelm infer` and `naturelm embed` both run here."""
    todo = pending_files(files, writer)
    tracker = RunProgress(todo, writer, progress)
    recordings = (Recording.from_file(path, window_seconds, hop_seconds, prompt) for path in todo)
    on_batch = lambda windows: tracker.answered(sum(w.end - w.start for w in windows))  # noqa: E731
    for result in run_recordings(model, processor, recordings, task, batch_size, on_batch=on_batch):
        tracker.write_file(todo[result.index], result.rows, result.error)
    return tracker.close()


def _duration(path: Path | str) -> float | None:
    """Seconds of a local file (0 for a bad one); None for a URL, whose length is only known once it is fetched."""
    if isinstance(path, str) and "://" in path:
        return None
    try:
        frames, rate = audio_info(path)
    except AudioError:
        return 0.0
    return frames / rate
