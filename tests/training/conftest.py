"""Fixtures of the training tests: a tiny NatureLM folder, small text-audio datasets over the shared recordings (the
longest ones labelled, the others as background noise; chosen by duration, not by name) and a tiny BEATs checkpoint
cut from the parity fixture."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_helpers import LABELS, detection_rows, species_rows, tiny_training_model, write_metadata


@pytest.fixture(scope="session")
def species_clips(audio_recordings) -> list[dict]:
    """`[{"path", "label"}]`: the `len(LABELS)` longest shared recordings, longest first (it holds several 10-s
    crops), labelled with `LABELS` in that order; the remaining recordings are the noise. Chosen and ordered by what
    the files hold, never by name."""
    if len(audio_recordings) <= len(LABELS):
        pytest.fail(f"The training tests need more than {len(LABELS)} recordings (some of them for noise).")
    longest = sorted(audio_recordings, key=lambda r: r.decoded_seconds, reverse=True)[: len(LABELS)]
    if longest[0].decoded_seconds <= 10:
        pytest.fail("The training tests need a recording longer than 10 s, to crop.")
    return [{"path": str(recording.path), "label": label} for recording, label in zip(longest, LABELS)]


@pytest.fixture(scope="session")
def noise_dir(audio_recordings, species_clips, tmp_path_factory) -> Path:
    """A folder of background-noise recordings: links to the shared recordings that are not species clips."""
    folder = tmp_path_factory.mktemp("noise")
    labelled = {clip["path"] for clip in species_clips}
    for recording in audio_recordings:
        if str(recording.path) not in labelled:
            (folder / recording.name).symlink_to(recording.path)
    return folder


@pytest.fixture(scope="session")
def species_dataset(species_clips, tmp_path_factory) -> Path:
    """Folder dataset: one classification row per labelled clip."""
    return write_metadata(tmp_path_factory.mktemp("species"), species_rows(species_clips))


@pytest.fixture(scope="session")
def mixed_task_dataset(species_clips, tmp_path_factory) -> Path:
    """Folder dataset: the classification rows and two detection rows (for mixup and noise replacement)."""
    rows = species_rows(species_clips) + detection_rows(species_clips)[:2]
    return write_metadata(tmp_path_factory.mktemp("mixed"), rows)


@pytest.fixture(scope="session")
def tiny_model_dir(tokenizer_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny_model")
    model, processor = tiny_training_model(tokenizer_dir)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def beats_checkpoint(parity_dir, tmp_path_factory) -> Path:
    """A BEATs checkpoint in Microsoft's format (`{"cfg", "model"}`), cut from the parity fixture's original model."""
    config = json.loads((parity_dir / "original_checkpoint_full" / "config.json").read_text())
    state = load_file(parity_dir / "original_checkpoint_full" / "model.safetensors")
    beats = {key.removeprefix("beats."): value for key, value in state.items() if key.startswith("beats.")}
    path = tmp_path_factory.mktemp("beats") / "beats_tiny.pt"
    torch.save({"cfg": config["beats_cfg"], "model": beats}, path)
    return path


@pytest.fixture
def one_thread():
    """Single-threaded torch for in-process training: on a shared 2-core machine, two threads mostly wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
