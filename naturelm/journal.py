"""The run journal (`<output>.progress`): the one resume mechanism of `naturelm infer`, `embed` and `evaluate`.

Its first line records the run's settings; each later line records one finished unit of work (a file, a batch) as
its writer describes it (a byte offset, rows, ids). `--resume` refuses when the settings differ, a torn last line (a
kill in mid-write) is dropped, and an exclusive lock (`fcntl.flock` on the journal) makes a second run on the same
output refuse while the first one runs.
"""

import errno
import fcntl
import hashlib
import json
import os
from pathlib import Path

JOURNAL_SUFFIX = ".progress"


class UsageError(ValueError):
    """A run that must not start as asked (exit 2): settings that differ from the journal's, a locked output..."""


class OutputError(RuntimeError):
    """The output cannot be written; `exit_code` is 2 when the user must pick another place, 3 when the machine
    failed (a full disk, an I/O error)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def output_error(error: OSError, path: Path | str) -> OutputError:
    """An `OSError` met while writing `path`, as one line a user can act on."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutputError(f"cannot write {path}: the disk is full; free space, then rerun with --resume.", 3)
    if isinstance(error, PermissionError) or error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(f"cannot write {path}: permission denied (a read-only folder?); choose another --output.",
                           2)
    if isinstance(error, FileNotFoundError):
        return OutputError(f"cannot write {path}: its folder {Path(path).parent} does not exist.", 2)
    if isinstance(error, IsADirectoryError):
        return OutputError(f"cannot write {path}: it is a directory; name a file.", 2)
    return OutputError(f"cannot write {path}: {error.strerror or error}.", 3)


def check_output_path(output: Path) -> None:
    """Refuses, before any work, an output that cannot be a file: a directory, a missing or read-only folder."""
    if output.is_dir():
        raise OutputError(f"cannot write {output}: it is a directory; name a file.", 2)
    if not output.parent.is_dir():
        raise OutputError(f"cannot write {output}: its folder {output.parent} does not exist.", 2)
    if not os.access(output.parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {output}: permission denied (a read-only folder?); choose another --output.",
                          2)


def _describe(value) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


class Journal:
    """`<output>.progress`, locked for the life of the run.

    Args:
        output: the results file the journal belongs to.
        settings: what makes results comparable (model, query, window, ...); JSON values. A `revision` the
            earlier run could not know (a hub model not yet downloaded) is not compared.
        resume: continue the journal's run (refused if `settings` differ); otherwise start afresh.
    """

    def __init__(self, output: Path, settings: dict, resume: bool) -> None:
        self.path = output.with_name(output.name + JOURNAL_SUFFIX)
        self.settings = json.loads(json.dumps(settings))  # as they read back
        self.entries: list[dict] = []
        try:
            self._handle = open(self.path, "a+b")
        except OSError as error:
            raise output_error(error, self.path) from None
        try:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._handle.close()
            raise UsageError(f"another naturelm run is writing {output} (it holds {self.path}); wait for it or "
                             "choose another --output.") from None
        try:
            if resume:
                self._read(output)
            else:
                self._handle.truncate(0)
                self._append({"settings": self.settings})
        except BaseException:
            self.close()
            raise

    def _read(self, output: Path) -> None:
        self._handle.seek(0)
        data = self._handle.read()
        if data and not data.endswith(b"\n"):  # a kill in mid-line: that unit is not finished
            data = data[: data.rfind(b"\n") + 1]
            self._handle.truncate(len(data))
        lines = data.splitlines()
        try:
            records = [json.loads(line) for line in lines]
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise UsageError(f"{self.path} is damaged (not a naturelm journal); rerun with --overwrite.") from None
        if not records:  # killed before the settings line: nothing was finished
            self._append({"settings": self.settings})
            return
        if not isinstance(records[0], dict) or "settings" not in records[0]:
            raise UsageError(f"{self.path} does not record its run's settings (an older naturelm wrote it); rerun "
                             "with --overwrite.")
        before = records[0]["settings"]
        differ = [f"{key} ({_describe(before.get(key))} there, {_describe(self.settings.get(key))} now)"
                  for key in sorted(set(before) | set(self.settings))
                  if before.get(key) != self.settings.get(key) and not (key == "revision" and before.get(key) is None)]
        if differ:
            raise UsageError(f"--resume with other settings than the run in {output}: {'; '.join(differ)}. Rerun "
                             "with the same settings, or with --overwrite to start again.")
        self.entries = records[1:]

    def _append(self, record: dict) -> None:
        try:
            self._handle.write((json.dumps(record, ensure_ascii=False) + "\n").encode())
            self._handle.flush()
            os.fsync(self._handle.fileno())
        except OSError as error:
            raise output_error(error, self.path) from None

    def record(self, entry: dict) -> None:
        """Journals one finished unit of work (after its results are on disk)."""
        self._append(entry)
        self.entries.append(entry)

    def close(self) -> None:
        """Releases the lock."""
        if not self._handle.closed:
            self._handle.close()


def model_identity(model: str, smoke: bool) -> dict:
    """The model as the journal records it: a local folder by its resolved path and a fingerprint of its files (a
    re-converted folder is another model), a hub id with the commit the cache holds (None before the download)."""
    if smoke:
        return {"model": "smoke", "revision": "tiny-random"}
    path = Path(model)
    if path.is_dir():
        digest = hashlib.sha256()
        for file in sorted(p for p in path.iterdir() if p.is_file()):
            stat = file.stat()
            digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
        return {"model": str(path.resolve()), "revision": digest.hexdigest()[:16]}
    try:
        from huggingface_hub import snapshot_download

        revision = Path(snapshot_download(model, local_files_only=True)).name
    except Exception:  # not in the cache yet (or not a hub id): the load says what is wrong
        revision = None
    return {"model": model, "revision": revision}


def existing_output_check(output: Path, resume: bool, overwrite: bool) -> None:
    """What may be done to an existing `output` before a journal is opened: nothing without `--resume` or
    `--overwrite`, and `--resume` only where a journal says how far the run got."""
    if resume and overwrite:
        raise UsageError("choose one of --resume and --overwrite.")
    journal = output.with_name(output.name + JOURNAL_SUFFIX)
    if output.exists() and not (resume or overwrite):
        raise FileExistsError(f"{output} exists; pass --resume to continue that run or --overwrite to replace it.")
    if resume and output.is_file() and output.stat().st_size and not journal.exists():
        raise UsageError(f"--resume: {output} has no journal ({journal.name}), so what it holds cannot be trusted "
                         "to be a finished part of this run; rerun with --overwrite, or choose another --output.")


__all__ = ["JOURNAL_SUFFIX", "Journal", "OutputError", "UsageError", "check_output_path", "existing_output_check",
           "model_identity", "output_error"]
