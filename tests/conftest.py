"""Shared fixtures. Directories come from env vars so the same tests run on another fixture of the same format; a
missing directory fails the run (CI must never skip the parity tests)."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

# Under pytest-xdist each worker is a process with its own torch: split the CPUs between the workers (and the
# processes they start, which inherit this), or their thread pools fight over the cores (measured on 2 cores, 2
# workers: a third of the tests' time went to that).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // _WORKERS)))

import torch  # noqa: E402
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
def audio_recordings(audio_dir):
    """`audio_fixture.Recording`s of every recording in `audio_dir` (durations, sizes, channels read from the files),
    for tests to pick recordings by what they are rather than by name."""
    from audio_fixture import read_recordings

    recordings = read_recordings(audio_dir)
    if not recordings:
        pytest.fail(f"No recordings in {audio_dir} (set NATURELM_AUDIO_DIR).")
    return recordings


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


@pytest.fixture(scope="session")
def tiny_model_dir(parity_dir, tmp_path_factory) -> Path:
    """The tiny parity model converted to a transformers folder (fp32), as a Space or notebook user would load it."""
    from naturelm.convert import convert

    folder = tmp_path_factory.mktemp("tiny_parity_model")
    convert(parity_dir / "original_checkpoint_full", folder, parity_dir / "base_llama",
            parity_dir / "qformer_config.json", dtype="fp32")
    return folder


@dataclass
class SpaceServer:
    url: str
    log: Path
    settings: dict


@pytest.fixture(scope="session")
def space_server(tiny_model_dir, audio_dir, tmp_path_factory):
    """`python space/app.py` on 127.0.0.1 with the tiny parity model, as a Space runs it (small limits, so that
    the tests can reach them)."""
    root = tmp_path_factory.mktemp("space")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = {
        "NATURELM_MODEL": str(tiny_model_dir), "NATURELM_DTYPE": "fp32", "NATURELM_DEVICE": "cpu",
        "NATURELM_MAX_FILE_MB": "1", "NATURELM_MAX_SECONDS": "60", "NATURELM_MAX_WINDOWS": "30",
        "NATURELM_EXAMPLES_DIR": str(audio_dir),
    }
    env = {**os.environ, **settings, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(root / "gradio"), "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(root / "hf_home"), "MPLCONFIGDIR": str(root / "matplotlib"), "PYTHONUNBUFFERED": "1"}
    env.pop("SPACES_ZERO_GPU", None)
    log = root / "space.log"
    app = Path(__file__).resolve().parents[1] / "space" / "app.py"
    with open(log, "w") as handle:
        process = subprocess.Popen([sys.executable, str(app)], cwd=app.parent, env=env, stdout=handle,
                                   stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 240
        while True:
            if process.poll() is not None:
                pytest.fail(f"The Space exited with {process.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(url + "config", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:  # not listening yet
                pass
            if time.time() > deadline:
                pytest.fail(f"The Space did not answer on {url} within 240 s:\n{log.read_text()}")
            time.sleep(0.5)
        yield SpaceServer(url, log, settings)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
