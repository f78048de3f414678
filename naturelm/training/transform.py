"""The dataset transform that turns schema rows into training examples: checks the row, decodes its audio, crops it
and applies the paper's augmentations, with bad rows skipped and counted instead of crashing the run.

Randomness: every example draws from its own `numpy.random.Generator`, seeded from `(seed, epoch, row content)`. The
result does not depend on the number of DataLoader workers or processes, on the order rows are read in, or on
whether the run was resumed: a resumed run augments each row exactly as the uninterrupted run did, and a new epoch
draws new augmentations.

Bad rows (unreadable audio, an empty answer, a missing value, an instruction with several audio placeholders):
- map-style data (`datasets.Dataset.with_transform`): the row is replaced by another row drawn with the example's
  generator, so batches keep their size (DeepSpeed and DDP need every rank to step together);
- streamed data (`datasets.IterableDataset.map`): the row is dropped.
Either way the count per reason travels with a good example (`skipped_rows`), so the trainer can log totals.
"""

import hashlib
import logging
from collections import defaultdict, deque

import numpy as np

from processing_naturelm import AUDIO_PLACEHOLDER, audio_instruction
from .audio import SAMPLING_RATE, AudioDecodeError, decode_audio
from .augment import NONE_ANSWER, fit_length, matches, mix_at_snr, mixup, random_crop

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("audio", "instruction", "output")
SKIP_REASONS = ("unreadable_audio", "empty_answer", "missing_column", "bad_instruction")
EXAMPLE_COLUMNS = ("audio", "instruction", "output", "task", "source", "skipped_rows")
_LOGGED_SKIPS = 20  # per worker: the first skips are logged as warnings, later ones at debug level


class SkippedRow(Exception):
    """A row that cannot become a training example; `reason` is one of `SKIP_REASONS`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def row_key(row: dict) -> list[int]:
    """A stable 128-bit fingerprint of a row (audio reference or bytes, instruction, output, task) as 32-bit words."""
    digest = hashlib.blake2b(digest_size=16)
    audio = row.get("audio")
    if isinstance(audio, dict):
        digest.update(audio.get("bytes") or b"")
        digest.update(str(audio.get("path")).encode())
    elif isinstance(audio, str):
        digest.update(audio.encode())
    elif audio is not None:
        digest.update(np.asarray(audio, dtype=np.float32).tobytes())
    for column in ("instruction", "output", "task"):
        digest.update(b"\x00" + str(row.get(column)).encode())
    return np.frombuffer(digest.digest(), dtype=np.uint32).tolist()


class TextAudioTransform:
    """
    Schema rows (`audio`, `instruction`, `output`, `task`, `source`) -> examples for [`NatureLMDataCollator`]:
    16 kHz float32 `audio`, an `instruction` with exactly one `<AudioHere>`, the `output`, and `skipped_rows`.

    Args:
        seed (`int`): seed of all randomness (per example, combined with the epoch and the row).
        training (`bool`, defaults to `True`): augment and crop at random; otherwise crop at the start, no augmentation.
        max_seconds (`float`, defaults to 10.0): longer clips are cropped to this length.
        random_crop (`bool`, defaults to `True`): random crop offset in training.
        noise_files (`list[str]`): background-noise recordings.
        noise_prob, noise_snr_db, noise_exclude_task_pattern: background-noise mixing.
        mixup_prob, mixup_max_partners, mixup_task_pattern: mixup of detection clips.
        noise_replace_prob, noise_replace_task_pattern: replacing detection clips by noise (answer "None").
        sampling_rate (`int`, *optional*): rate of raw numeric audio arrays.
        max_attempts (`int`, defaults to 64): consecutive bad rows tolerated before the run stops (the data is broken).
    """

    def __init__(
        self,
        seed: int,
        training: bool = True,
        max_seconds: float = 10.0,
        random_crop: bool = True,
        noise_files: list[str] | tuple[str, ...] = (),
        noise_prob: float = 0.0,
        noise_snr_db: tuple[float, float] = (-10.0, 25.0),
        noise_exclude_task_pattern: str | None = None,
        mixup_prob: float = 0.0,
        mixup_max_partners: int = 2,
        mixup_task_pattern: str | None = "detection",
        noise_replace_prob: float = 0.0,
        noise_replace_task_pattern: str | None = "detection$",
        sampling_rate: int | None = None,
        max_attempts: int = 64,
    ):
        if (noise_prob > 0 or noise_replace_prob > 0) and not noise_files:
            raise ValueError("Noise augmentation needs at least one noise recording.")
        self.seed = seed
        self.training = training
        self.max_samples = int(round(max_seconds * SAMPLING_RATE))
        self.random_crop = random_crop
        self.noise_files = list(noise_files)
        self.noise_prob = noise_prob
        self.noise_snr_db = tuple(noise_snr_db)
        self.noise_exclude_task_pattern = noise_exclude_task_pattern
        self.mixup_prob = mixup_prob
        self.mixup_max_partners = mixup_max_partners
        self.mixup_task_pattern = mixup_task_pattern
        self.noise_replace_prob = noise_replace_prob
        self.noise_replace_task_pattern = noise_replace_task_pattern
        self.sampling_rate = sampling_rate
        self.max_attempts = max_attempts
        self.epoch = 0
        self._source = None
        self._pools: dict[str, np.ndarray] = {}
        self._recent: dict[str, deque] = defaultdict(lambda: deque(maxlen=32))
        self._pending = np.zeros(len(SKIP_REASONS), dtype=np.int64)
        self._num_logged = 0

    @property
    def augments(self) -> bool:
        return self.training and (self.noise_prob > 0 or self.mixup_prob > 0 or self.noise_replace_prob > 0)

    def set_epoch(self, epoch: int) -> None:
        """Augmentations differ from one epoch to the next; the trainer calls this at each epoch start."""
        self.epoch = int(epoch)

    def bind(self, source) -> "TextAudioTransform":
        """Gives the transform random access to the (untransformed) map-style dataset it is applied to: bad rows are
        replaced by other rows and mixup partners are drawn from it."""
        self._source = source
        self._pools = {}
        if self.training and self.mixup_prob > 0:
            tasks = np.asarray(source["task"], dtype=object)
            outputs = np.asarray(source["output"], dtype=object)
            for task in set(tasks.tolist()):
                if task is not None and matches(self.mixup_task_pattern, task):
                    usable = (tasks == task) & np.array([o not in (None, "", NONE_ANSWER) for o in outputs])
                    self._pools[task] = np.flatnonzero(usable)
        return self

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_recent"] = dict(state["_recent"])  # a defaultdict of a lambda does not pickle
        return state

    def __setstate__(self, state: dict) -> None:
        recent = defaultdict(lambda: deque(maxlen=32))
        recent.update(state.pop("_recent"))
        self.__dict__.update(state, _recent=recent)

    # -- entry points -----------------------------------------------------------------------------------------------

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        """Map-style transform (`dataset.with_transform(transform.bind(dataset))`): one example per row, bad rows
        replaced by other rows of the dataset."""
        examples = []
        for row in _rows(batch):
            skipped = np.zeros(len(SKIP_REASONS), dtype=np.int64)
            replacements = None  # draws the replacement rows, from the first row's seed
            for _ in range(self.max_attempts):
                try:
                    examples.append(self.prepare(row, self._rng(row)))
                    break
                except SkippedRow as skip:
                    skipped[SKIP_REASONS.index(skip.reason)] += 1
                    self._log_skip(skip)
                    if self._source is None:
                        raise RuntimeError("A map-style transform must be bound to its dataset (`bind`).") from skip
                    replacements = replacements or np.random.default_rng([self.seed, self.epoch, 1, *row_key(row)])
                    row = self._source[int(replacements.integers(len(self._source)))]
            else:
                reasons = dict(zip(SKIP_REASONS, skipped.tolist()))
                raise RuntimeError(f"{self.max_attempts} rows in a row could not be used ({reasons}); the dataset "
                                   "looks broken.")
            examples[-1]["skipped_rows"] = skipped.tolist()
        return _columns(examples)

    def stream(self, batch: dict[str, list]) -> dict[str, list]:
        """Streaming transform (`iterable_dataset.map(transform.stream, batched=True, remove_columns=...)`): bad rows
        are dropped, their counts attached to the last good example of the call (or a later one)."""
        examples = []
        for row in _rows(batch):
            try:
                example = self.prepare(row, self._rng(row))
            except SkippedRow as skip:
                self._pending[SKIP_REASONS.index(skip.reason)] += 1
                self._log_skip(skip)
                continue
            example["skipped_rows"] = [0] * len(SKIP_REASONS)
            examples.append(example)
        if examples:  # this call's skips (and earlier ones still pending) go with its last good example
            examples[-1]["skipped_rows"] = self._pending.tolist()
            self._pending[:] = 0
        return _columns(examples)

    # -- one row ----------------------------------------------------------------------------------------------------

    def prepare(self, row: dict, rng: np.random.Generator) -> dict:
        """One schema row -> one example, or [`SkippedRow`]."""
        for column in REQUIRED_COLUMNS:
            if row.get(column) is None:
                raise SkippedRow("missing_column", f"the row has no {column!r}")
        answer, instruction, task = str(row["output"]), str(row["instruction"]), str(row.get("task") or "")
        if not answer.strip():
            raise SkippedRow("empty_answer", f"empty answer for {instruction[:60]!r}")
        placeholders = instruction.count(AUDIO_PLACEHOLDER)
        if placeholders > 1:
            raise SkippedRow("bad_instruction", f"{placeholders} '{AUDIO_PLACEHOLDER}' placeholders for one clip")
        instruction = audio_instruction(instruction)
        try:
            waveform = decode_audio(row["audio"], row.get("sampling_rate") or self.sampling_rate)
        except AudioDecodeError as error:
            raise SkippedRow("unreadable_audio", str(error)) from error

        if not self.training:
            waveform = random_crop(waveform, self.max_samples, None)
        elif self._draw(rng, self.noise_replace_prob, self.noise_replace_task_pattern, task):
            noise = self._noise(rng, self.max_samples)
            if noise is not None:
                waveform, answer = noise, NONE_ANSWER
        else:
            waveform = random_crop(waveform, self.max_samples, rng if self.random_crop else None)
            clean = waveform
            excluded = matches(self.noise_exclude_task_pattern, task)
            if not excluded and self._draw(rng, self.noise_prob, None, task):
                noise = self._noise(rng, waveform.size)
                if noise is not None:
                    waveform = mix_at_snr(waveform, noise, float(rng.uniform(*self.noise_snr_db)))
            if self._draw(rng, self.mixup_prob, self.mixup_task_pattern, task):
                partners = self._partners(task, rng)
                waveform, answer, instruction = mixup(waveform, answer, instruction, partners, rng)
            if self._source is None and matches(self.mixup_task_pattern, task) and row["output"] != NONE_ANSWER:
                self._recent[task].append((clean, str(row["output"])))  # later partners of this worker's stream
        return {
            "audio": np.clip(waveform, -1.0, 1.0).astype(np.float32, copy=False),
            "instruction": instruction,
            "output": answer,
            "task": task,
            "source": str(row.get("source") or ""),
        }

    # -- helpers ----------------------------------------------------------------------------------------------------

    def _rng(self, row: dict) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, *row_key(row)])

    @staticmethod
    def _draw(rng: np.random.Generator, prob: float, pattern: str | None, task: str) -> bool:
        if prob <= 0 or (pattern is not None and not matches(pattern, task)):
            return False
        return bool(rng.random() < prob)

    def _noise(self, rng: np.random.Generator, length: int) -> np.ndarray | None:
        path = self.noise_files[int(rng.integers(len(self.noise_files)))]
        try:
            return fit_length(decode_audio(path), length, rng)
        except AudioDecodeError as error:
            logger.warning("Skipping noise augmentation: %s", error)
            return None

    def _partners(self, task: str, rng: np.random.Generator) -> list[tuple[np.ndarray, str]]:
        count = int(rng.integers(1, self.mixup_max_partners + 1))
        if self._source is None:  # streamed: recent clips of this worker
            recent = self._recent.get(task) or ()
            return [recent[int(i)] for i in rng.integers(len(recent), size=count)] if recent else []
        pool = self._pools.get(task)
        if pool is None or pool.size == 0:
            return []
        partners = []
        for index in rng.choice(pool, size=count):
            row = self._source[int(index)]
            try:
                waveform = decode_audio(row["audio"], row.get("sampling_rate") or self.sampling_rate)
            except AudioDecodeError:
                continue
            partners.append((random_crop(waveform, self.max_samples, rng if self.random_crop else None), row["output"]))
        return partners

    def _log_skip(self, skip: SkippedRow) -> None:
        self._num_logged += 1
        level = logging.WARNING if self._num_logged <= _LOGGED_SKIPS else logging.DEBUG
        logger.log(level, "Skipping a training row (%s)", skip)


def _rows(batch: dict[str, list]) -> list[dict]:
    columns = list(batch)
    return [dict(zip(columns, values)) for values in zip(*(batch[c] for c in columns))]


def _columns(examples: list[dict]) -> dict[str, list]:
    return {column: [example[column] for example in examples] for column in EXAMPLE_COLUMNS}


__all__ = [
    "EXAMPLE_COLUMNS",
    "REQUIRED_COLUMNS",
    "SKIP_REASONS",
    "SkippedRow",
    "TextAudioTransform",
    "row_key",
]
