"""Folder runs over long recordings: windows of all files batched together, one row per window, written per file as
it finishes, resumable after a kill, a failed row (with the reason) for every bad file."""

import csv
import io
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from audio_naturelm import AudioError, audio_info
from .options import FORMATS
from .engine import Recording, Task, build_prompt, generation_task, label_task, run_recordings

RAVEN_COLUMNS = ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
                 "High Freq (Hz)", "Begin File", "answer"]
CSV_COLUMNS = ["file", "start", "end", "answer", "probabilities", "error"]


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


class ResultWriter:
    """Writes rows in one of the formats and journals each finished file (`<output>.progress`): the journal holds
    the byte offset after the file's rows, so `--resume` cuts off a half-written file and skips finished ones."""

    def __init__(self, output: Path | None, fmt: str, resume: bool, overwrite: bool):
        self.fmt, self.output, self.selection, self.done = fmt, output, 0, set()
        if output is None:
            self.handle, self.journal = sys.stdout, None
            self._write_header()
            return
        self.journal_path = output.with_name(output.name + ".progress")
        if output.exists() and not (resume or overwrite):
            raise FileExistsError(f"{output} exists; pass --resume to continue that run or --overwrite to replace it.")
        offset = 0
        if resume and output.exists() and self.journal_path.exists():
            for line in self.journal_path.read_text().splitlines():
                entry = json.loads(line)
                self.done.add(entry["file"])
                offset, self.selection = entry["offset"], entry["selection"]
        if offset:
            self.handle = open(output, "r+b")
            self.handle.truncate(offset)
            self.handle.seek(offset)
            self.journal = open(self.journal_path, "a")
        else:
            self.handle = open(output, "wb")
            self.journal = open(self.journal_path, "w")
            self._write_header()
            self._sync()

    def _write_header(self) -> None:
        self._emit(table_header(self.fmt))

    def _emit(self, records: list) -> None:
        text = render_records(self.fmt, records)
        self.handle.write(text if self.handle is sys.stdout else text.encode())

    def _sync(self) -> None:
        self.handle.flush()
        if self.handle is not sys.stdout:
            os.fsync(self.handle.fileno())

    def write_file(self, path: Path | str, rows: list[dict], error: str | None) -> None:
        records = table_records(self.fmt, path, rows, error, first_selection=self.selection + 1)
        if self.fmt == "raven":
            self.selection += len(records)
        self._emit(records)
        self._sync()
        if self.journal is not None:
            entry = {"file": str(path), "offset": self.handle.tell(), "selection": self.selection}
            self.journal.write(json.dumps(entry) + "\n")
            self.journal.flush()
            os.fsync(self.journal.fileno())

    def close(self) -> None:
        if self.handle is not sys.stdout:
            self.handle.close()
            self.journal.close()


def table_header(fmt: str) -> list[list[str]]:
    """The header record of a format (none for JSON lines)."""
    return {"csv": [CSV_COLUMNS], "raven": [RAVEN_COLUMNS]}.get(fmt, [])


def table_records(fmt: str, path: Path | str, rows: list[dict], error: str | None, first_selection: int = 1) -> list:
    """One file's records in `fmt`: a dict per window (jsonl) or a list of cells (csv, raven, numbered from
    `first_selection`); a bad file is one record that carries its `error`. `path` may be a URL (Ray runs)."""
    if fmt == "jsonl":
        return [{"file": str(path), "error": error}] if error else [{"file": str(path), **r} for r in rows]
    if fmt == "csv":
        return [[str(path), "", "", "", "", error]] if error else [
            [str(path), r["start"], r["end"], _answer(r), json.dumps(_probabilities(r)) if "labels" in r else "", ""]
            for r in rows]
    if fmt == "raven":
        return [
            [selection, "Spectrogram 1", 1, r["start"], r["end"], 0, 8000, Path(path).name,
             f"ERROR: {error}" if error else _answer(r)]
            for selection, r in enumerate(rows or [{"start": 0.0, "end": 0.0}], start=first_selection)
        ]
    raise ValueError(f"Unknown format {fmt!r}; choose one of {', '.join(FORMATS)}.")


def render_records(fmt: str, records: list) -> str:
    """Records as the text the format's file holds (JSON lines, comma- or tab-separated)."""
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    buffer = io.StringIO()
    csv.writer(buffer, delimiter="\t" if fmt == "raven" else ",", lineterminator="\n").writerows(records)
    return buffer.getvalue()


def format_table(path: Path, rows: list[dict], fmt: str, error: str | None = None) -> str:
    """A whole table for one recording (header included), byte for byte what `naturelm infer --format FMT` writes
    for it alone: e.g. a Raven Pro selection table to download from an app."""
    return render_records(fmt, table_header(fmt) + table_records(fmt, path, rows, error))


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


def _answer(row: dict) -> str:
    return row["labels"][0] if "labels" in row else row["text"]


def _probabilities(row: dict) -> dict:
    return dict(zip(row["labels"], row["scores"]))


def make_task(labels: list[str] | None = None, **generate_kwargs) -> Task:
    """What `naturelm infer` asks of each window: scores over `labels` when given, else a generated answer."""
    return label_task(labels) if labels else generation_task(**generate_kwargs)


def pending_files(files: list, writer: ResultWriter | MemoryWriter) -> list:
    """The files a run still has to do: those the writer has not finished (`--resume`)."""
    return [f for f in files if str(f) not in writer.done]


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
    """Runs every window of every file through the engine (`run_recordings`: read ahead in the background, batched
    across files) and writes each file's rows once all its windows are answered (in order), or a failed row when the
    file is bad."""
    prompt = build_prompt(processor, query)
    task = make_task(labels, **generate_kwargs)
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
