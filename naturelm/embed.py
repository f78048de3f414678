"""Per-window audio embeddings of recordings, for users who cluster or search them."""

from pathlib import Path

import numpy as np

from .engine import Recording, embedding_task, run_recordings


def embed_files(model, processor, files: list[Path], window_seconds: float = 10.0, hop_seconds: float | None = None,
                batch_size: int = 8) -> dict[str, list]:
    """A column table, one row per window (and one row with `error` set per bad file): `file`, `start`, `end`,
    `llm_embedding` (mean of the window's LLM-space audio tokens), `beats_embedding` (mean BEATs feature)."""
    table = {key: [] for key in ("file", "start", "end", "llm_embedding", "beats_embedding", "error")}
    recordings = (Recording.from_file(path, window_seconds, hop_seconds) for path in files)
    for result in run_recordings(model, processor, recordings, embedding_task(), batch_size):
        cells = [(r["start"], r["end"], r["llm_embedding"], r["beats_embedding"], None) for r in result.rows]
        for start, end, llm, beats, error in cells or [(None, None, None, None, result.error)]:
            for key, value in zip(table, (result.key, start, end, llm, beats, error)):
                table[key].append(value)
    return table


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
