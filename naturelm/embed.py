"""Per-window audio embeddings of recordings, for users who cluster or search them."""

from pathlib import Path

import numpy as np

from .audio import AudioError, stream_windows
from pipeline_naturelm import AudioWindow, embed_windows


def embed_files(model, processor, files: list[Path], window_seconds: float = 10.0, hop_seconds: float | None = None,
                batch_size: int = 8) -> dict[str, list]:
    """A column table, one row per window (and one row with `error` set per bad file): `file`, `start`, `end`,
    `llm_embedding` (mean of the window's LLM-space audio tokens), `beats_embedding` (mean BEATs feature)."""
    table = {key: [] for key in ("file", "start", "end", "llm_embedding", "beats_embedding", "error")}
    batch: list[tuple[Path, AudioWindow]] = []

    def flush() -> None:
        if batch:
            llm, beats = embed_windows(model, processor, [w for _, w in batch])
            for (path, window), llm_row, beats_row in zip(batch, llm, beats):
                _append(table, str(path), window.start, window.end, llm_row, beats_row, None)
            batch.clear()

    for path in files:
        try:
            for start, end, samples in stream_windows(path, window_seconds, hop_seconds or window_seconds):
                batch.append((path, AudioWindow(0, start, end, samples, "")))
                if len(batch) >= batch_size:
                    flush()
        except AudioError as error:
            _append(table, str(path), None, None, None, None, str(error))
    flush()
    return table


def _append(table: dict, file: str, start, end, llm, beats, error) -> None:
    for key, value in zip(table, (file, start, end, llm, beats, error)):
        table[key].append(value)


def write_embeddings(table: dict[str, list], output: Path) -> None:
    """`.parquet` (one row per window, embeddings as lists, failed files as rows with `error`) or `.npz` (stacked
    arrays plus the `path`/`start`/`end` index of the good windows)."""
    good = [i for i, error in enumerate(table["error"]) if error is None]
    if output.suffix == ".npz":
        np.savez(
            output,
            path=np.array([table["file"][i] for i in good]),  # `file` is taken by np.savez itself
            start=np.array([table["start"][i] for i in good], dtype=np.float64),
            end=np.array([table["end"][i] for i in good], dtype=np.float64),
            llm_embedding=np.stack([table["llm_embedding"][i] for i in good]) if good else np.zeros((0, 0)),
            beats_embedding=np.stack([table["beats_embedding"][i] for i in good]) if good else np.zeros((0, 0)),
        )
    elif output.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = {k: [v.tolist() if isinstance(v, np.ndarray) else v for v in values] for k, values in table.items()}
        pq.write_table(pa.table(columns), output)
    else:
        raise ValueError(f"--output must end in .parquet or .npz, got {output.name}")
