"""
Running a model over BEANS-Zero rows into a predictions file, the way the original evaluation did: each clip cut or
zero-padded to its component's length, the generic prompt for detection components with many labels, deterministic
beam search; batches are formed within a component and appended to the file as soon as they are answered, and
journaled (`naturelm.journal`, as `naturelm infer` does), so that a run can be killed and resumed (`resume=True` skips
the ids the journal holds and refuses other settings).
"""

import copy
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path


from audio_naturelm import to_mono
from modeling_naturelm import NatureLMForConditionalGeneration
from processing_naturelm import NatureLMProcessor
from .dataset import BeansZeroExample, parse_row
from .errors import EvaluationError
from .generation import generate_answers
from .predictions import BadRow, PredictionsWriter


@dataclass
class RunSummary:
    """What a run did: rows answered now, rows found bad now, rows skipped because the file already had them, and
    the bad rows the file cannot record (no id, or an id used twice), which are only reported."""

    answered: int = 0
    bad: int = 0
    already_done: int = 0
    unrecorded_bad_rows: list[BadRow] = field(default_factory=list)


def processor_for_clip_length(processor: NatureLMProcessor, seconds: float) -> NatureLMProcessor:
    """A copy of `processor` whose feature extractor cuts or pads clips to `seconds` (and whose prompts therefore
    expand to that length's number of audio tokens)."""
    extractor = processor.feature_extractor
    if extractor.max_length_seconds == seconds:
        return processor
    resized = copy.copy(processor)
    resized.feature_extractor = type(extractor).from_dict({**extractor.to_dict(), "max_length_seconds": seconds})
    return resized


def render_prompt(processor: NatureLMProcessor, instruction: str) -> str:
    """The chat prompt for an instruction that already holds its audio placeholder."""
    return processor.apply_chat_template(
        [{"role": "user", "content": instruction}], add_generation_prompt=True, tokenize=False
    )


def run_beans_zero(
    model: NatureLMForConditionalGeneration,
    processor: NatureLMProcessor,
    rows: Iterable[dict],
    predictions_path: str | os.PathLike,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    num_beams: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    settings: dict | None = None,
    generate: Callable[..., list[str]] = generate_answers,
    progress: Callable[[str], None] | None = None,
) -> RunSummary:
    """
    Answers every row and appends `{"id", "dataset_name", "prediction", "label"}` lines to `predictions_path`
    (bad rows as `{"id", "dataset_name", "error"}`).

    Args:
        model, processor: the model (eval mode, on its device) and its processor.
        rows (`Iterable[dict]`): dataset rows, e.g. from `naturelm.evaluation.dataset.iter_rows`.
        predictions_path (`str` or `os.PathLike`): the JSONL file.
        batch_size (`int`, defaults to 8): rows per model call, all from one component.
        max_new_tokens (`int`, *optional*), num_beams (`int`, *optional*): overrides of the checkpoint's generation
            config, which decodes as the original BEANS-Zero run (2 beams, up to 300 new tokens).
        resume (`bool`): keep what the journal (`<predictions_path>.progress`) says is finished and skip those ids
            (a batch written but not journaled is cut off first); refused if `settings` differ from the journal's.
        overwrite (`bool`): start the file afresh. Without `resume` or `overwrite` an existing file is an error.
        settings (`dict`, *optional*): what makes predictions comparable (model, dataset, decoding ...), journaled.
        generate (`Callable`): the function that runs the model (see `generate_answers`, whose signature it shares).
        progress (`Callable[[str], None]`, *optional*): receives a line after every batch.

    Returns:
        [`RunSummary`]
    """
    if batch_size < 1:
        raise EvaluationError(f"batch_size must be positive, got {batch_size}.")
    path = Path(predictions_path)
    decoding = {name: value for name, value in (("max_new_tokens", max_new_tokens), ("num_beams", num_beams))
                if value is not None}
    settings = {**(settings or {}), "decoding": decoding}
    seen: set[str] = set()
    summary = RunSummary()
    processors: dict[float, NatureLMProcessor] = {}
    pending: dict[str, list[BeansZeroExample]] = {}

    with PredictionsWriter(path, settings, resume, overwrite) as writer:
        previous = writer.done

        def answer(name: str) -> None:
            examples = pending.pop(name)
            seconds = examples[0].component.clip_seconds
            if seconds not in processors:
                processors[seconds] = processor_for_clip_length(processor, seconds)
            clip_processor = processors[seconds]
            extractor = clip_processor.feature_extractor
            clips = [
                to_mono(e.audio, e.sampling_rate, extractor.sampling_rate, name=f"row {e.id}")[: extractor.num_samples]
                for e in examples
            ]
            prompts = [render_prompt(clip_processor, e.instruction) for e in examples]
            answers = generate(model, clip_processor, prompts, clips, extractor.sampling_rate, **decoding)
            if len(answers) != len(examples):
                raise RuntimeError(f"The model gave {len(answers)} answers for {len(examples)} prompts.")
            writer.write(
                {"id": e.id, "dataset_name": name, "prediction": text, "label": e.label}
                for e, text in zip(examples, answers)
            )
            summary.answered += len(examples)
            if progress is not None:
                progress(f"{name}: {len(examples)} answered ({summary.answered} in this run)")

        for row in rows:
            row_id = row.get("id") if isinstance(row.get("id"), str) else None
            if row_id in previous:
                summary.already_done += 1
                continue
            if row_id is not None and row_id in seen:
                summary.bad += 1
                summary.unrecorded_bad_rows.append(BadRow(row_id, row.get("dataset_name"), "repeated id"))
                continue
            if row_id is not None:
                seen.add(row_id)
            example = parse_row(row)
            if isinstance(example, BadRow):
                summary.bad += 1
                if example.id is None:
                    summary.unrecorded_bad_rows.append(example)
                else:
                    writer.write([{"id": example.id, "dataset_name": example.dataset_name, "error": example.reason}])
                continue
            name = example.component.name
            pending.setdefault(name, []).append(example)
            if len(pending[name]) >= batch_size:
                answer(name)
        for name in list(pending):
            answer(name)
    return summary


__all__ = ["RunSummary", "processor_for_clip_length", "render_prompt", "run_beans_zero"]
