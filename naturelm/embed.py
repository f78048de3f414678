"""Per-window audio embeddings of recordings, for users who cluster or search them: the same run as `naturelm infer`
(`run_task`, the `ResultWriter` and its journal, so `--resume` works alike) with the embedding task."""

from pathlib import Path

from .engine import embedding_task
from .infer import EMBED_FIELDS, ResultWriter, Summary, run_task


def embed(model, processor, files: list[Path], writer: ResultWriter, window_seconds: float = 10.0,
          hop_seconds: float | None = None, batch_size: int = 8, progress: bool = True) -> Summary:
    """Writes one row per window through `writer` (made with `fields=EMBED_FIELDS`), one row with `error` per bad
    file: `file`, `start`, `end`, `llm_embedding` (mean of the window's LLM-space audio tokens), `beats_embedding`
    (mean BEATs feature)."""
    return run_task(model, processor, files, writer, embedding_task(), "", window_seconds, hop_seconds, batch_size,
                    progress)


__all__ = ["EMBED_FIELDS", "embed"]
