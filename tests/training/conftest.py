"""Fixtures of the training tests: a tiny NatureLM folder, small text-audio datasets over ../shared/audio (labels and
noise clips listed in tests/data) and a tiny BEATs checkpoint cut from the parity fixture."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_helpers import DATA, detection_rows, read_csv, species_rows, tiny_training_model, write_metadata


@pytest.fixture(scope="session")
def species_clips(audio_dir) -> list[dict]:
    """`[{"path", "label"}]` for the labelled clips of tests/data/species_clips.csv; a missing file fails."""
    clips = []
    for row in read_csv(DATA / "species_clips.csv"):
        path = audio_dir / row["file_name"]
        if not path.is_file():
            pytest.fail(f"Fixture recording {path} is missing.")
        clips.append({"path": str(path), "label": row["output"]})
    return clips


@pytest.fixture(scope="session")
def noise_dir(audio_dir, tmp_path_factory) -> Path:
    """A folder of background-noise recordings: links to the clips listed in tests/data/noise_clips.csv."""
    folder = tmp_path_factory.mktemp("noise")
    for row in read_csv(DATA / "noise_clips.csv"):
        source = audio_dir / row["file_name"]
        if not source.is_file():
            pytest.fail(f"Fixture recording {source} is missing.")
        (folder / row["file_name"]).symlink_to(source)
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
