"""Shared fixtures. Directories come from env vars so the same tests run on another fixture of the same format; a
missing directory fails the run (CI must never skip the parity tests)."""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SHARED = Path(__file__).resolve().parents[2] / "shared"


def _shared_dir(env: str, default: Path) -> Path:
    path = Path(os.environ.get(env, default))
    if not path.is_dir():
        pytest.fail(f"Fixture directory {path} is missing (set {env}); these tests must not be skipped.")
    return path


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    return _shared_dir("NATURELM_PARITY_DIR", SHARED / "parity")


@pytest.fixture(scope="session")
def audio_dir() -> Path:
    return _shared_dir("NATURELM_AUDIO_DIR", SHARED / "audio")


@pytest.fixture(scope="session")
def beans_metrics_dir() -> Path:
    """Official beans-zero metrics of a predictions file (predictions.jsonl + metrics.json)."""
    return _shared_dir("NATURELM_BEANS_METRICS_DIR", SHARED / "beans_zero_metrics")


@pytest.fixture(scope="session")
def mini_beans_zero(audio_dir):
    """The mini BEANS-Zero (a `datasets.Dataset` in the BEANS-Zero schema) built from the shared recordings."""
    from naturelm.evaluation.mini import build_mini_beans_zero

    return build_mini_beans_zero(audio_dir)


@pytest.fixture(scope="session")
def mini_beans_zero_dir(mini_beans_zero, tmp_path_factory) -> Path:
    """The mini BEANS-Zero saved with `save_to_disk`."""
    path = tmp_path_factory.mktemp("mini_beans_zero") / "dataset"
    mini_beans_zero.save_to_disk(str(path))
    return path


@pytest.fixture(scope="session")
def reference(parity_dir) -> dict[str, torch.Tensor]:
    return load_file(parity_dir / "reference_outputs.safetensors")


@pytest.fixture(scope="session")
def reference_io(parity_dir) -> dict:
    return json.loads((parity_dir / "reference_io.json").read_text())


@pytest.fixture(scope="session")
def tokenizer_dir(parity_dir) -> Path:
    return parity_dir / "base_llama"


def pytest_sessionfinish(session, exitstatus):
    """Under CI a skipped test is a failure: the parity checks must really run."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if os.environ.get("CI") and reporter is not None and reporter.stats.get("skipped"):
        session.exitstatus = 1
