"""The notebooks as a reader runs them: top to bottom in a fresh kernel (here on the tiny parity model), and
committed without outputs."""

import csv
import json
import os
import sys
from pathlib import Path

import pytest

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


def test_quickstart_runs_top_to_bottom_on_the_tiny_model(tiny_model_dir, audio_dir, kernel_env, monkeypatch):
    recording = audio_dir / "yell-YELLAMRO20160506SM3.mp3"  # 37 s: seven 10-s windows every 5 s
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
    assert any("American Robin" in html for html in _outputs(notebook, "text/html"))  # the label table

    selections = workdir / f"{recording.stem}.selections.txt"
    rows = list(csv.reader(selections.read_text().splitlines(), delimiter="\t"))
    assert rows[0] == RAVEN_COLUMNS
    assert [float(r[3]) for r in rows[1:]] == [0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0]
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

    text = "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs)
    rows = list(csv.DictReader((workdir / "my_recordings" / "metadata.csv").read_text().splitlines()))
    assert {r["output"] for r in rows} == {"Lazuli Bunting", "Green Treefrog", "American Robin", "Gray Wolf"}
    assert len(rows) == 10  # 10-s clips: 2 + 1 + 4 + 3
    assert all((workdir / "my_recordings" / r["file_name"]).is_file() for r in rows)
    assert "10 clips of 4 species in my_recordings/" in text
    assert "finetune.yaml" in text and "--max_steps 2 \\\n" in text
    output = workdir / "my-naturelm"
    assert (output / "adapter_model.safetensors").is_file() and (output / "config.json").is_file()
    assert "fine-tuned folder: my-naturelm; LoRA adapter: True" in text
    for species in ("Lazuli Bunting", "Green Treefrog", "American Robin", "Gray Wolf"):
        assert f"labelled {species!r}, answer " in text
    assert text.count("{'loss': ") == 2  # two logged training steps, parsed for the loss curve
    assert "most probable species = label on " in text and " of 10 clips" in text
    assert len(_outputs(notebook, "image/png")) == 1  # the loss curve
    assert any("Gray Wolf" in html for html in _outputs(notebook, "text/html"))  # the label probabilities


def test_beans_zero_runs_and_reads_the_metrics_table(tiny_model_dir, audio_dir, kernel_env, monkeypatch):
    workdir = kernel_env / "work"
    workdir.mkdir()
    monkeypatch.setenv("NATURELM_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("NATURELM_AUDIO_DIR", str(audio_dir))
    monkeypatch.setenv("NATURELM_MAX_NEW_TOKENS", "4")
    monkeypatch.setenv("NATURELM_NUM_BEAMS", "1")

    notebook = _run("03_beans_zero.ipynb", workdir)

    text = "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs)
    html = _outputs(notebook, "text/html")
    components = ("esc50", "watkins", "enabirds", "gibbons", "captioning", "zf-indiv")
    results = workdir / "results"
    predictions = [json.loads(line) for line in (results / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 14 and {p["dataset_name"] for p in predictions} == set(components)
    metrics = json.loads((results / "metrics.json").read_text())
    assert list(metrics["metrics"]) == list(components) and sum(metrics["num_scored"].values()) == 14
    assert "6 components, 14 rows scored, 0 bad rows" in text
    table = next(h for h in html if "Accuracy" in h and "mAP" in h)  # the metrics table: a row per component
    for name in components:
        assert f">{name}</th>" in table, name
        assert f"| {name} " in (results / "metrics.md").read_text()
    assert "BEANS-Zero: 6 component(s), 14 row(s) scored, 0 bad row(s)." in text  # the baseline's report
    assert (results / "baseline.jsonl").is_file()
    comparison = next(h for h in html if "most common answer" in h)
    assert all(f">{name}</th>" in comparison for name in components)
