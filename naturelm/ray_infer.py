"""`naturelm infer --ray`: the same folder run on a Ray cluster, with the same rows through the same writer.

Ray Data hands the files to model actors (one per GPU, or CPU actors), a few files per call; each actor loads the
model once (`naturelm.loading.load`) and runs its files through the engine (`naturelm.engine.run_recordings`:
reading ahead in a background thread, batching windows across the files), exactly as a local run does, then returns
every file's rows. The driver hands each finished file to the run's one `ResultWriter`. Actors that die are restarted
and their files retried by Ray; the driver writes a file once, whatever Ray repeats. A file is the unit of work: a
long recording runs on one actor.

Ray is an optional dependency (`pip install 'naturelm[ray]'`), imported only here and only when a Ray run starts.
"""

import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from audio_naturelm import AUDIO_EXTENSIONS, find_audio_files, stream_windows
from .engine import Recording, RecordingResult, Task, build_prompt, run_recordings
from .options import RayUnavailableError
from .infer import MemoryWriter, ResultWriter, RunProgress, Summary, make_task, pending_files


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


def answer_files(model, processor, paths: list[str], task: Task, prompt: str, settings: WindowSettings,
                 batch_size: int) -> list[RecordingResult]:
    """Runs files (local paths or URLs) through the engine, as a local run does; a URL is fetched to a temporary file
    in the engine's reading thread, so it decodes exactly as a local file does, and its reason names the URL."""
    with tempfile.TemporaryDirectory(prefix="naturelm-") as folder:
        local = {path: Path(folder) / str(number) / _name(path) if is_url(path) else Path(path)
                 for number, path in enumerate(paths)}
        recordings = [Recording(path, _windows_reader(path, local[path], settings), prompt) for path in paths]
        results = list(run_recordings(model, processor, recordings, task, batch_size))
    for result in results:
        if result.error is not None and is_url(result.key):
            result.error = result.error.replace(str(local[result.key]), result.key)
    return results


def _name(url: str) -> str:
    return PurePosixPath(url.split("://", 1)[1]).name or "audio"


def _windows_reader(path: str, local: Path, settings: WindowSettings) -> Callable[[], Iterator[tuple]]:
    """A `Recording`'s windows: a URL is fetched first, and its copy deleted once read."""

    def windows() -> Iterator[tuple[float, float, np.ndarray]]:
        if not is_url(path):
            yield from stream_windows(local, settings.window_seconds, settings.hop_seconds)
            return
        try:
            _fetch(path, local)
            yield from stream_windows(local, settings.window_seconds, settings.hop_seconds)
        finally:
            local.unlink(missing_ok=True)

    return windows


def _fetch(url: str, target: Path) -> None:
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(url)
    target.parent.mkdir(parents=True, exist_ok=True)
    with filesystem.open_input_stream(path) as source, open(target, "wb") as handle:
        shutil.copyfileobj(source, handle, 1 << 20)


class ModelActor:
    """A Ray model actor: loads the model once (as `naturelm infer` loads it) and answers each call's files with
    `answer_files`. Each file's rows travel as JSON (exact for floats)."""

    def __init__(self, load_kwargs: dict, query: str, labels: list[str] | None, settings: WindowSettings,
                 batch_size: int, generate_kwargs: dict):
        from .loading import load

        self.model, self.processor = load(**load_kwargs)
        self.prompt = build_prompt(self.processor, query)
        self.task = make_task(labels, **generate_kwargs)
        self.settings, self.batch_size = settings, batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = answer_files(self.model, self.processor, [str(p) for p in batch["path"]], self.task, self.prompt,
                               self.settings, self.batch_size)
        return {"path": batch["path"], "rows": np.array([json.dumps(r.rows) for r in results], dtype=object),
                "error": np.array([r.error or "" for r in results], dtype=object)}


@dataclass
class RayResources:
    """How the model runs on the cluster: `actors` actors of `cpus_per_actor` CPUs and `gpus_per_actor` GPUs each."""

    actors: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0


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
    """Fails loudly instead of waiting forever for actors the cluster cannot place."""
    ray = import_ray()
    cpus, gpus = ray.cluster_resources().get("CPU", 0.0), ray.cluster_resources().get("GPU", 0.0)
    if resources.actors < 1 or resources.cpus_per_actor < 0 or resources.gpus_per_actor < 0:
        raise ValueError("--ray-actors must be positive and --ray-cpus-per-actor / --ray-gpus-per-actor not negative.")
    if resources.actors * resources.cpus_per_actor > cpus:
        raise ValueError(f"{resources.actors} actors of {resources.cpus_per_actor} CPUs need more than the cluster's "
                         f"{cpus:g} CPUs; lower --ray-actors or --ray-cpus-per-actor (fractions such as 0.5 work).")
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
        load_kwargs (`dict`): `naturelm.loading.load`'s arguments, as each actor loads the model.
        batch_size (`int`, defaults to 8): windows per model call; also the files each actor call takes, so that
            short files fill a batch.
        resources (`RayResources`, *optional*): actors and their CPUs / GPUs (default: one actor of one CPU).
    """
    ray = import_ray()
    resources = resources or RayResources()
    check_resources(resources)
    todo = pending_files(files, writer)
    tracker = RunProgress(todo, writer, progress)
    if not todo:
        return tracker.close()
    actor_kwargs = {"load_kwargs": load_kwargs, "query": query, "labels": labels, "batch_size": batch_size,
                    "settings": WindowSettings(window_seconds, hop_seconds), "generate_kwargs": generate_kwargs}
    dataset = ray.data.from_items([{"path": str(path)} for path in todo], override_num_blocks=len(todo)).map_batches(
        ModelActor, fn_constructor_kwargs=actor_kwargs, batch_size=batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=resources.actors), num_cpus=resources.cpus_per_actor,
        num_gpus=resources.gpus_per_actor or None,
    )  # Ray Data restarts a dead actor and retries its files (max_restarts = max_task_retries = -1 by default)
    names = {str(path): path for path in todo}
    for block in dataset.iter_batches(batch_size=None, batch_format="numpy"):  # block by block, as they finish
        for path, rows, error in zip(block["path"], block["rows"], block["error"]):
            if path in names:  # else finished already: a repeat from a retried call
                rows = json.loads(rows)
                tracker.answered(sum(row["end"] - row["start"] for row in rows))
                tracker.write_file(names.pop(path), rows, str(error) or None)
    if names:
        raise RuntimeError(f"The Ray run ended without finishing {len(names)} files: {', '.join(sorted(names))}")
    return tracker.close()


__all__ = [
    "ModelActor",
    "RayResources",
    "RayUnavailableError",
    "WindowSettings",
    "answer_files",
    "check_resources",
    "connect",
    "import_ray",
    "list_audio_files",
    "run_ray",
]
