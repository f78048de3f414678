"""The notebooks as a reader runs them: top to bottom in a fresh kernel (here on the tiny parity model), and
committed without outputs."""

import ast
import csv
import json
import math
import os
import sys
from pathlib import Path

import pytest
from audio_fixture import window_starts

nbclient = pytest.importorskip("nbclient", reason="needs the `notebooks` extra: pip install -e '.[notebooks]'")
import nbformat  # noqa: E402

from naturelm.infer import RAVEN_COLUMNS  # noqa: E402

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def test_notebooks_are_committed_without_outputs():
    paths = sorted(NOTEBOOKS.glob("*.ipynb"))
    assert [p.name for p in paths] == ["01_quickstart.ipynb", "02_finetune_lora.ipynb", "03_beans_zero.ipynb"]
    for path in paths:
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        assert notebook.metadata.kernelspec.name == "python3", path.name
        for index, cell in enumerate(notebook.cells):
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, (
                    f"{path.name} cell {index} holds outputs; clear them before committing "
                    "(jupyter nbconvert --clear-output --inplace, or Edit → Clear all outputs)")


@pytest.fixture
def kernel_env(tmp_path, monkeypatch) -> Path:
    """A `python3` kernel that is this very interpreter (not whatever else the machine has registered), with its
    state under `tmp_path`."""
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3", "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    for name in ("IPYTHONDIR", "MPLCONFIGDIR", "HF_HOME"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)
    return tmp_path


def _run(name: str, workdir: Path) -> nbformat.NotebookNode:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(workdir)}})
    try:
        client.execute()
    finally:  # the executed notebook is a test artefact, errors and all
        artifacts = Path(os.environ.get("NATURELM_TEST_ARTIFACTS", Path(__file__).parent / "artifacts"))
        (artifacts / "notebooks").mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, artifacts / "notebooks" / name)
    return notebook


def _outputs(notebook, mime: str) -> list:
    return [o["data"][mime] for cell in notebook.cells if cell.cell_type == "code"
            for o in cell.outputs if mime in o.get("data", {})]


def _notebook_constant(name: str, notebook_file: str):
    """The literal a notebook assigns to `name` (e.g. the recordings it labels), read from its code."""
    notebook = nbformat.read(NOTEBOOKS / notebook_file, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code" and f"{name} = " in cell.source:
            for node in ast.walk(ast.parse(cell.source)):
                if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
                    return ast.literal_eval(node.value)
    raise AssertionError(f"{notebook_file} assigns no literal to {name}")


def test_quickstart_runs_top_to_bottom_on_the_tiny_model(tiny_model_dir, audio_recordings, kernel_env, monkeypatch):
    longest = max(audio_recordings, key=lambda r: r.decoded_seconds)  # several 10-s windows every 5 s
    recording = longest.path
    starts = window_starts(longest.decoded_seconds, 10, 5)
    assert len(starts) > 2, f"{recording.name} is too short to give several windows"
    workdir = kernel_env / "work"
    workdir.mkdir()
    monkeypatch.setenv("NATURELM_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("NATURELM_AUDIO", str(recording))
    monkeypatch.setenv("NATURELM_MAX_NEW_TOKENS", "8")

    notebook = _run("01_quickstart.ipynb", workdir)

    text = "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs)
    assert f"model folder: {tiny_model_dir}" in text
    for task in ("species", "caption", "call type", "life stage", "detection"):
        assert f"{task:>10}: " in text
    assert "α = 0.5:" in text and "α = 1.0:" in text
    assert len(_outputs(notebook, "image/png")) == 2  # the spectrogram timeline and the label bars
    labels = _notebook_constant("LABELS", "01_quickstart.ipynb")
    assert any(all(label in html for label in labels) for html in _outputs(notebook, "text/html"))  # the label table

    selections = workdir / f"{recording.stem}.selections.txt"
    rows = list(csv.reader(selections.read_text().splitlines(), delimiter="\t"))
    assert rows[0] == RAVEN_COLUMNS
    assert [float(r[3]) for r in rows[1:]] == starts
    assert {r[7] for r in rows[1:]} == {recording.name}


def test_finetune_lora_trains_and_the_folder_loads_and_answers(tiny_model_dir, audio_dir, kernel_env, monkeypatch):
    workdir = kernel_env / "work"
    workdir.mkdir()
    monkeypatch.setenv("NATURELM_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("NATURELM_AUDIO_DIR", str(audio_dir))
    monkeypatch.setenv("NATURELM_MAX_STEPS", "2")
    monkeypatch.setenv("NATURELM_MAX_NEW_TOKENS", "4")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    notebook = _run("02_finetune_lora.ipynb", workdir)

    # the recordings the notebook labels, cut into 10-s clips (a last one only if it holds more than 1 s)
    from audio_naturelm import read_audio

    labelled = _notebook_constant("LABELS", "02_finetune_lora.ipynb")
    species = set(labelled.values())
    clips = {name: math.ceil(max(len(read_audio(audio_dir / name, 16000)) - 16000, 1) / 160000)
             for name in labelled}
    num_clips = sum(clips.values())

    text = "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs)
    rows = list(csv.DictReader((workdir / "my_recordings" / "metadata.csv").read_text().splitlines()))
    assert {r["output"] for r in rows} == species
    assert len(rows) == num_clips
    for name, count in clips.items():
        assert sum(r["file_name"].startswith(f"clips/{Path(name).stem}_") for r in rows) == count, name
    assert all((workdir / "my_recordings" / r["file_name"]).is_file() for r in rows)
    assert f"{num_clips} clips of {len(species)} species in my_recordings/" in text
    assert "finetune.yaml" in text and "--max_steps 2 \\\n" in text
    output = workdir / "my-naturelm"
    assert (output / "adapter_model.safetensors").is_file() and (output / "config.json").is_file()
    assert "fine-tuned folder: my-naturelm; LoRA adapter: True" in text
    for label in species:
        assert f"labelled {label!r}, answer " in text
    assert text.count("{'loss': ") == 2  # two logged training steps, parsed for the loss curve
    assert "most probable species = label on " in text and f" of {num_clips} clips" in text
    assert len(_outputs(notebook, "image/png")) == 1  # the loss curve
    # the label probabilities: a column per species
    assert any(all(label in html for label in species) for html in _outputs(notebook, "text/html"))


def test_beans_zero_runs_and_reads_the_metrics_table(tiny_model_dir, audio_dir, mini_beans_zero, kernel_env,
                                                     monkeypatch):
    workdir = kernel_env / "work"
    workdir.mkdir()
    monkeypatch.setenv("NATURELM_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("NATURELM_AUDIO_DIR", str(audio_dir))
    monkeypatch.setenv("NATURELM_MAX_NEW_TOKENS", "4")
    monkeypatch.setenv("NATURELM_NUM_BEAMS", "1")

    notebook = _run("03_beans_zero.ipynb", workdir)

    text = "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs)
    html = _outputs(notebook, "text/html")
    # the notebook runs the mini BEANS-Zero of the same recordings: its components, in the official order
    from naturelm.evaluation import COMPONENTS

    components = [name for name in COMPONENTS if name in set(mini_beans_zero["dataset_name"])]
    num_rows = len(mini_beans_zero)
    results = workdir / "results"
    predictions = [json.loads(line) for line in (results / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == num_rows and {p["dataset_name"] for p in predictions} == set(components)
    metrics = json.loads((results / "metrics.json").read_text())
    assert list(metrics["metrics"]) == components and sum(metrics["num_scored"].values()) == num_rows
    assert f"{len(components)} components, {num_rows} rows scored, 0 bad rows" in text
    table = next(h for h in html if "Accuracy" in h and "mAP" in h)  # the metrics table: a row per component
    for name in components:
        assert f">{name}</th>" in table, name
        assert f"| {name} " in (results / "metrics.md").read_text()
    # the baseline's report
    assert f"BEANS-Zero: {len(components)} component(s), {num_rows} row(s) scored, 0 bad row(s)." in text
    assert (results / "baseline.jsonl").is_file()
    comparison = next(h for h in html if "most common answer" in h)
    assert all(f">{name}</th>" in comparison for name in components)
