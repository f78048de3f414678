"""`naturelm infer --ray`: the same folder run on a Ray cluster, with the same rows through the same writer.

Ray Data streams the files: read tasks (CPU) decode and window each file through the one audio path
(`naturelm.engine.read_windows`), model actors (one per GPU, or CPU actors) load the model once and answer batches
of windows through the engine's own batch step (`naturelm.engine.answer_windows`), and the driver gathers each
file's rows and hands the finished file to the run's one `ResultWriter`. Actors that die are restarted and their
batches retried by Ray; the driver keeps a window once whatever Ray repeats, so every window is written exactly once.

Ray is an optional dependency (`pip install 'naturelm[ray]'`), imported only here and only when a Ray run starts.
"""

import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from audio_naturelm import AUDIO_EXTENSIONS, find_audio_files
from .engine import AudioWindow, Recording, answer_windows, build_prompt, read_windows
from .options import RayUnavailableError
from .infer import MemoryWriter, ResultWriter, RunProgress, Summary, make_task, pending_files

WINDOW, END = "window", "end"  # a row's kind: one window of a file, or how the file ended (its count, or the reason)


def import_ray():
    """Ray, or an error saying how to install it."""
    try:
        import ray
        import ray.data
    except ImportError as error:
        raise RayUnavailableError(
            f"`naturelm infer --ray` needs Ray ({error}); install it with: pip install 'naturelm[ray]'"
        ) from None
    return ray


def is_url(path: str | Path) -> bool:
    return isinstance(path, str) and "://" in path


def list_audio_files(inputs: list[str]) -> list[Path | str]:
    """Local files and folders as `find_audio_files` finds them; URLs of a filesystem pyarrow reads (s3://, gs://,
    file://, ...) as URLs of their audio files, folders searched recursively by extension."""
    found: list[Path | str] = []
    for item in inputs:
        if not is_url(item):
            found += find_audio_files([item])
            continue
        from pyarrow import fs

        filesystem, root = fs.FileSystem.from_uri(item)
        scheme = item.split("://", 1)[0]
        info = filesystem.get_file_info(root)
        if info.type != fs.FileType.Directory:
            found.append(item)
            continue
        entries = filesystem.get_file_info(fs.FileSelector(root, recursive=True))
        found += sorted(f"{scheme}://{e.path}" for e in entries
                        if e.type == fs.FileType.File and PurePosixPath(e.path).suffix.lower() in AUDIO_EXTENSIONS)
    return found


@dataclass
class WindowSettings:
    window_seconds: float = 10.0
    hop_seconds: float | None = None


def read_file(item: dict, settings: WindowSettings) -> Iterator[dict]:
    """A Ray read task: one row per window of a file (its samples as float32 bytes), then one `END` row with the
    file's window count, or the reason it could not be read. A URL is fetched to a local temporary file first, so it
    decodes exactly as a local file does."""
    path = item["path"]
    with tempfile.TemporaryDirectory(prefix="naturelm-") as folder:
        source = _fetch(path, Path(folder)) if is_url(path) else path
        count, error = 0, ""
        for window in read_windows(Recording.from_file(source, settings.window_seconds, settings.hop_seconds)):
            if isinstance(window, str):
                error = window.replace(str(source), path)  # a fetched URL's reason names the URL
                break
            yield {"path": path, "kind": WINDOW, "number": count, "start": window.start, "end": window.end,
                   "samples": window.audio.astype(np.float32, copy=False).tobytes(), "error": ""}
            count += 1
        yield {"path": path, "kind": END, "number": count, "start": 0.0, "end": 0.0, "samples": b"", "error": error}


def _fetch(url: str, folder: Path) -> Path:
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(url)
    target = folder / (PurePosixPath(path).name or "audio")
    with filesystem.open_input_stream(path) as source, open(target, "wb") as handle:
        shutil.copyfileobj(source, handle, 1 << 20)
    return target


class ModelActor:
    """A Ray model actor: loads the model once (as `naturelm infer` loads it) and answers each batch's windows in one
    engine batch; `END` rows pass through. Results travel as JSON (exact for floats), in the `row` column."""

    def __init__(self, load_kwargs: dict, query: str, labels: list[str] | None, generate_kwargs: dict):
        from .loading import load_for_inference

        self.model, self.processor = load_for_inference(**load_kwargs)
        self.prompt = build_prompt(self.processor, query)
        self.task = make_task(labels, **generate_kwargs)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        is_window = batch["kind"] == WINDOW
        windows = [AudioWindow(float(start), float(end), np.frombuffer(samples, np.float32), self.prompt)
                   for start, end, samples in zip(batch["start"][is_window], batch["end"][is_window],
                                                  batch["samples"][is_window])]
        answers = iter(answer_windows(self.model, self.processor, self.task, windows) if windows else [])
        rows = [json.dumps(next(answers)) if window else "" for window in is_window]
        return {"path": batch["path"], "kind": batch["kind"], "number": batch["number"], "error": batch["error"],
                "row": np.array(rows, dtype=object)}


@dataclass
class RayResources:
    """How the model runs on the cluster: `actors` actors of `cpus_per_actor` CPUs and `gpus_per_actor` GPUs each."""

    actors: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0


@dataclass
class _File:
    rows: dict[int, dict] = field(default_factory=dict)
    count: int | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.error is not None or (self.count is not None and len(self.rows) == self.count)


def connect(address: str | None, num_cpus: int | None = None) -> None:
    """Joins the cluster at `address` ("auto", "ray://host:10001", "host:6379"), or starts a local one (no address),
    unless this process is already connected; Ray's own progress bars and worker logs are kept off."""
    ray = import_ray()
    if not ray.is_initialized():
        ray.init(address=address, num_cpus=num_cpus if address is None else None, log_to_driver=False,
                 include_dashboard=False, logging_level=logging.WARNING)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False


def check_resources(resources: RayResources) -> None:
    """Fails loudly instead of hanging: actors that take every CPU leave none for the read tasks, and Ray Data then
    waits forever ("backpressured")."""
    ray = import_ray()
    cpus, gpus = ray.cluster_resources().get("CPU", 0.0), ray.cluster_resources().get("GPU", 0.0)
    if resources.actors < 1 or resources.cpus_per_actor < 0 or resources.gpus_per_actor < 0:
        raise ValueError("--ray-actors must be positive and --ray-cpus-per-actor / --ray-gpus-per-actor not negative.")
    if resources.actors * resources.cpus_per_actor + 1 > cpus:
        raise ValueError(
            f"{resources.actors} actors of {resources.cpus_per_actor} CPUs leave no CPU for the read tasks on a "
            f"cluster of {cpus:g} CPUs; lower --ray-actors or --ray-cpus-per-actor (fractions such as 0.5 work).")
    if resources.actors * resources.gpus_per_actor > gpus:
        raise ValueError(f"{resources.actors} actors of {resources.gpus_per_actor} GPUs need more than the "
                         f"cluster's {gpus:g} GPUs.")


def run_ray(
    files: list[Path | str],
    writer: ResultWriter | MemoryWriter,
    load_kwargs: dict,
    query: str,
    labels: list[str] | None = None,
    window_seconds: float = 10.0,
    hop_seconds: float | None = None,
    batch_size: int = 8,
    resources: RayResources | None = None,
    progress: bool = True,
    **generate_kwargs,
) -> Summary:
    """`naturelm.infer.run` on the connected Ray cluster (see `connect`): the same rows, each file written through
    `writer` once all its windows are answered (files in the order they finish), the same progress bar and summary.

    Args:
        load_kwargs (`dict`): `load_for_inference`'s arguments, as each actor loads the model.
        resources (`RayResources`, *optional*): actors and their CPUs / GPUs (default: one actor of one CPU).
    """
    ray = import_ray()
    resources = resources or RayResources()
    check_resources(resources)
    todo = pending_files(files, writer)
    tracker = RunProgress(todo, writer, progress)
    if not todo:
        return tracker.close()
    dataset = (
        ray.data.from_items([{"path": str(path)} for path in todo], override_num_blocks=len(todo))
        .flat_map(read_file, fn_kwargs={"settings": WindowSettings(window_seconds, hop_seconds)})
        .map_batches(
            ModelActor, fn_constructor_kwargs={"load_kwargs": load_kwargs, "query": query, "labels": labels,
                                               "generate_kwargs": generate_kwargs},
            batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=resources.actors),
            num_cpus=resources.cpus_per_actor, num_gpus=resources.gpus_per_actor or None,
        )  # Ray Data restarts a dead actor and retries its batches (max_restarts = max_task_retries = -1 by default)
    )
    names = {str(path): path for path in todo}
    states: dict[str, _File] = {}
    for block in dataset.iter_batches(batch_size=None, batch_format="numpy"):  # block by block, as they finish
        answered = 0.0
        for path, kind, number, error, answer in zip(block["path"], block["kind"], block["number"], block["error"],
                                                     block["row"]):
            if path not in names:  # finished already: a repeat from a retried task
                continue
            state = states.setdefault(path, _File())
            if kind == END:
                state.count, state.error = int(number), str(error) or None
            elif int(number) not in state.rows:
                state.rows[int(number)] = row = json.loads(answer)
                answered += row["end"] - row["start"]
            if state.finished:
                rows = [] if state.error else [state.rows[n] for n in range(state.count)]
                tracker.write_file(names.pop(path), rows, state.error)
                del states[path]
        tracker.answered(answered)
    if names:
        raise RuntimeError(f"The Ray run ended without finishing {len(names)} files: {', '.join(sorted(names))}")
    return tracker.close()


__all__ = [
    "ModelActor",
    "RayResources",
    "RayUnavailableError",
    "WindowSettings",
    "check_resources",
    "connect",
    "import_ray",
    "list_audio_files",
    "read_file",
    "run_ray",
]
