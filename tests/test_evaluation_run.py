"""`naturelm evaluate`: the mini BEANS-Zero, dataset loading, the batched run with the tiny model (clip lengths,
prompts, predictions file), resuming after a crash or a kill, bad rows, and the two commands."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from naturelm.cli import main
from naturelm.evaluation import COMPONENTS, EvaluationError, score_file
from naturelm.evaluation.components import GENERIC_DETECTION_PROMPT, instruction_for
from naturelm.evaluation.dataset import REQUIRED_COLUMNS, component_label_sets, iter_rows, load_beans_zero
from naturelm.evaluation.generation import generate_answers
from naturelm.evaluation.runner import run_beans_zero
from naturelm.testing_utils import tiny_model_and_processor

MAX_NEW_TOKENS = 3
NUM_BEAMS = 2


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model is latency-bound: one thread is fastest and immune to other processes on a 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tokenizer_dir):
    return tiny_model_and_processor(tokenizer_dir)


def _run(tiny, rows, path, **kwargs):
    kwargs = {"batch_size": 2, "max_new_tokens": MAX_NEW_TOKENS, "num_beams": NUM_BEAMS, **kwargs}
    return run_beans_zero(*tiny, rows, path, **kwargs)


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _components(dataset) -> list[str]:
    """The components of a dataset, in dataset order."""
    return list(dict.fromkeys(dataset["dataset_name"]))


def _batches(names: list[str], batch_size: int) -> list[list[int]]:
    """The row indices of every model call of a run, in call order: batches are formed within a component, answered
    as soon as they are full, and what is left of each component at the end."""
    calls, pending = [], {}
    for index, name in enumerate(names):
        pending.setdefault(name, []).append(index)
        if len(pending[name]) == batch_size:
            calls.append(pending.pop(name))
    return calls + list(pending.values())


@pytest.fixture(scope="module")
def full_run(tiny, mini_beans_zero_dir, tmp_path_factory) -> dict[str, dict]:
    """An uninterrupted run over the mini BEANS-Zero: id -> predictions record."""
    path = tmp_path_factory.mktemp("full_run") / "predictions.jsonl"
    _run(tiny, iter_rows(load_beans_zero(str(mini_beans_zero_dir))), path)
    return {record["id"]: record for record in _lines(path)}


def test_mini_beans_zero_has_the_dataset_schema(mini_beans_zero):
    assert set(REQUIRED_COLUMNS) | {"instruction_text", "source_dataset", "file_name", "created_at", "license"} == set(
        mini_beans_zero.column_names
    )
    assert len(set(mini_beans_zero["id"])) == len(mini_beans_zero)
    tasks, shorter, longer = set(), False, False
    for row in mini_beans_zero:
        component = COMPONENTS[row["dataset_name"]]
        metadata = json.loads(row["metadata"])
        assert row["task"] == component.task
        assert len(row["audio"]) == round(metadata["duration"] * metadata["sample_rate"]) > 0
        assert row["instruction"] == "<Audio><AudioHere></Audio> " + row["instruction_text"]
        tasks.add(component.task)
        shorter |= metadata["duration"] < component.clip_seconds
        longer |= metadata["duration"] > component.clip_seconds
    assert tasks == {"classification", "detection", "captioning"} and shorter and longer
    assert any(COMPONENTS[name].uses_generic_detection_prompt for name in mini_beans_zero["dataset_name"])
    assert any(
        COMPONENTS[name].task == "detection" and not COMPONENTS[name].uses_generic_detection_prompt
        for name in mini_beans_zero["dataset_name"]
    )


def test_components_follow_the_original_evaluation():
    assert len(COMPONENTS) == 22
    assert {name: c.clip_seconds for name, c in COMPONENTS.items() if c.clip_seconds != 10} == {
        "esc50": 5, "watkins": 3, "humbugdb": 3
    }
    generic = [name for name, c in COMPONENTS.items() if c.uses_generic_detection_prompt]
    assert generic == ["enabirds", "rfcx", "dcase"]  # detection with more than 8 labels, "None" included
    own = "<Audio><AudioHere></Audio> Which of these, if any, are present? Gibbon duet, None"
    assert instruction_for(COMPONENTS["gibbons"], own + "  ") == own
    assert instruction_for(COMPONENTS["enabirds"], own) == GENERIC_DETECTION_PROMPT
    assert instruction_for(COMPONENTS["esc50"], "What is it? ") == "<Audio><AudioHere></Audio> What is it?"


def test_loads_save_to_disk_parquet_and_streaming_alike(mini_beans_zero, mini_beans_zero_dir, tmp_path):
    parquet_dir = tmp_path / "parquet"
    parquet_dir.mkdir()
    mini_beans_zero.to_parquet(str(parquet_dir / "test-00000-of-00001.parquet"))
    expected = list(mini_beans_zero["id"])
    for source in (str(mini_beans_zero_dir), str(parquet_dir), str(parquet_dir / "test-00000-of-00001.parquet"),
                   str(parquet_dir / "*.parquet")):
        for streaming in (False, True):
            rows = list(iter_rows(load_beans_zero(source, streaming=streaming)))
            assert [row["id"] for row in rows] == expected, (source, streaming)
            assert [row["audio"].shape for row in rows] == [(len(a),) for a in mini_beans_zero["audio"]]
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvaluationError, match="neither a `save_to_disk` folder nor holds parquet"):
        load_beans_zero(str(tmp_path / "empty"))
    lacking = tmp_path / "lacking"
    mini_beans_zero.remove_columns(["metadata"]).save_to_disk(str(lacking))
    with pytest.raises(EvaluationError, match="lacks the BEANS-Zero column"):
        load_beans_zero(str(lacking))


def test_rows_are_selected_by_component_with_a_limit_per_component(mini_beans_zero, mini_beans_zero_dir):
    names = list(mini_beans_zero["dataset_name"])
    several = [name for name in _components(mini_beans_zero) if names.count(name) > 1]
    assert len(several) >= 2, "the mini BEANS-Zero needs two components with more than one row"
    wanted = [several[-1], several[0]]  # asked for in the other order: rows still come in dataset order
    expected = [mini_beans_zero["id"][names.index(name)] for name in sorted(wanted, key=names.index)]
    for streaming in (False, True):
        dataset = load_beans_zero(str(mini_beans_zero_dir), streaming=streaming)
        rows = list(iter_rows(dataset, wanted, limit=1))
        assert [row["id"] for row in rows] == expected
    assert "esc-50" not in COMPONENTS
    with pytest.raises(EvaluationError, match="Unknown BEANS-Zero component 'esc-50'"):
        list(iter_rows(load_beans_zero(str(mini_beans_zero_dir)), ["esc-50"]))


def test_run_cuts_clips_to_their_component_and_uses_the_original_prompts(tiny, mini_beans_zero, mini_beans_zero_dir,
                                                                         tmp_path):
    calls = []

    def recording(model, processor, prompts, clips, sampling_rate, **kwargs):
        batch = processor(text=prompts, audio=clips, sampling_rate=sampling_rate)
        calls.append((processor, prompts, batch))
        return generate_answers(model, processor, prompts, clips, sampling_rate, **kwargs)

    path = tmp_path / "predictions.jsonl"
    summary = _run(tiny, iter_rows(load_beans_zero(str(mini_beans_zero_dir))), path, generate=recording)
    assert (summary.answered, summary.bad, summary.already_done) == (len(mini_beans_zero), 0, 0)

    instructions = dict(zip(mini_beans_zero["id"], mini_beans_zero["instruction"]))
    records = _lines(path)
    assert sorted(r["id"] for r in records) == sorted(mini_beans_zero["id"])  # written batch by batch, in call order
    start = 0
    for processor, prompts, batch in calls:
        batch_records = records[start : start + len(prompts)]
        start += len(prompts)
        component = COMPONENTS[batch_records[0]["dataset_name"]]
        assert {r["dataset_name"] for r in batch_records} == {component.name}
        extractor = processor.feature_extractor
        assert extractor.max_length_seconds == component.clip_seconds
        assert batch["input_features"].shape[1] == extractor.num_frames
        assert ((batch["input_ids"] == processor.audio_token_id).sum(dim=1) == processor.num_audio_tokens).all()
        for record, prompt in zip(batch_records, prompts):
            own = instructions[record["id"]]
            expected = GENERIC_DETECTION_PROMPT if component.uses_generic_detection_prompt else own
            assert expected in prompt and prompt.count("<AudioHere>") == 1
    clip_lengths = {COMPONENTS[name].clip_seconds for name in mini_beans_zero["dataset_name"]}
    assert len(clip_lengths) > 1, "the mini BEANS-Zero needs components of different clip lengths"
    assert len({processor.num_audio_tokens for processor, _, _ in calls}) == len(clip_lengths)

    labels = dict(zip(mini_beans_zero["id"], mini_beans_zero["output"]))
    for record in records:
        assert set(record) == {"id", "dataset_name", "prediction", "label"}
        assert record["label"] == labels[record["id"]] and isinstance(record["prediction"], str)
    report = score_file(path, component_label_sets(load_beans_zero(str(mini_beans_zero_dir))))
    assert list(report.metrics) == list(dict.fromkeys(mini_beans_zero["dataset_name"]))
    assert sum(report.num_scored.values()) == len(mini_beans_zero) and report.bad_rows == []


def test_streaming_gives_the_same_predictions(tiny, mini_beans_zero_dir, full_run, tmp_path):
    path = tmp_path / "predictions.jsonl"
    _run(tiny, iter_rows(load_beans_zero(str(mini_beans_zero_dir), streaming=True)), path)
    assert {r["id"]: r for r in _lines(path)} == full_run


def test_a_crashed_run_resumes_without_duplicates(tiny, mini_beans_zero, mini_beans_zero_dir, full_run, tmp_path):
    batches = _batches(list(mini_beans_zero["dataset_name"]), 2)
    assert len(batches) >= 3, "the mini BEANS-Zero is too small to crash on the third batch"
    calls = 0

    def crash_on_third_batch(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("out of memory")
        return generate_answers(*args, **kwargs)

    path = tmp_path / "predictions.jsonl"
    with pytest.raises(RuntimeError, match="out of memory"):
        _run(tiny, iter_rows(load_beans_zero(str(mini_beans_zero_dir))), path, generate=crash_on_third_batch)
    written = _lines(path)
    # the two batches answered before the crash, whole
    assert [r["id"] for r in written] == [mini_beans_zero["id"][i] for batch in batches[:2] for i in batch]
    with pytest.raises(EvaluationError, match="--resume"):
        _run(tiny, iter_rows(load_beans_zero(str(mini_beans_zero_dir))), path)
    summary = _run(tiny, iter_rows(load_beans_zero(str(mini_beans_zero_dir))), path, resume=True)
    assert summary.already_done == len(written) and summary.answered == len(full_run) - len(written)
    records = _lines(path)
    assert len(records) == len({r["id"] for r in records}) == len(full_run)
    assert {r["id"]: r for r in records} == full_run


def test_a_line_cut_off_by_a_kill_is_dropped_on_resume(tiny, mini_beans_zero_dir, full_run, tmp_path):
    from naturelm.evaluation.predictions import PredictionsWriter

    path = tmp_path / "predictions.jsonl"
    records = list(full_run.values())
    with PredictionsWriter(path, {"decoding": {"max_new_tokens": MAX_NEW_TOKENS, "num_beams": NUM_BEAMS}}) as writer:
        for start in range(0, len(records), 2):  # as `_run` writes them: batches of 2
            writer.write(records[start : start + 2])
    journal = path.with_name(path.name + ".progress")
    settings, *entries = journal.read_text().splitlines(keepends=True)
    kept = len(entries) // 2
    assert kept >= 1
    offset = json.loads(entries[kept - 1])["offset"]
    # killed while writing the next batch and its journal line: both are cut off mid-line
    path.write_bytes(path.read_bytes()[: offset + 17])
    journal.write_text(settings + "".join(entries[:kept]) + entries[kept][:9])
    summary = _run(tiny, iter_rows(load_beans_zero(str(mini_beans_zero_dir))), path, resume=True)
    assert summary.already_done == sum(len(json.loads(entry)["ids"]) for entry in entries[:kept])
    records = _lines(path)
    assert len(records) == len({r["id"] for r in records}) == len(full_run)
    journal.unlink()
    with pytest.raises(EvaluationError, match="no journal"):
        _run(tiny, [], path, resume=True)


def test_bad_rows_are_recorded_with_their_id_and_the_rest_is_run(tiny, mini_beans_zero, mini_beans_zero_dir,
                                                                 tmp_path):
    names = list(mini_beans_zero["dataset_name"])
    component = next((name for name in _components(mini_beans_zero) if names.count(name) >= 3), None)
    assert component is not None, "the mini BEANS-Zero needs a component with three rows"
    good = list(iter_rows(load_beans_zero(str(mini_beans_zero_dir)), [component]))
    template = good[0]
    bad = {
        "empty": {**template, "id": "empty", "audio": template["audio"][:0]},
        "stranger": {**template, "id": "stranger", "dataset_name": "esc-50"},
        "no-instruction": {**template, "id": "no-instruction", "instruction": None},
        "no-rate": {**template, "id": "no-rate", "metadata": json.dumps({"duration": 1.0})},
        "two-clips": {**template, "id": "two-clips", "instruction": "<AudioHere> and <AudioHere>"},
    }
    no_id = {**template, "id": None}
    rows = [good[0], *bad.values(), no_id, good[1], {**good[1]}, good[2]]
    path = tmp_path / "predictions.jsonl"
    summary = _run(tiny, rows, path)
    assert (summary.answered, summary.bad) == (3, len(bad) + 2)
    assert [row.reason for row in summary.unrecorded_bad_rows] == ["missing id", "repeated id"]
    errors = {r["id"]: r["error"] for r in _lines(path) if "error" in r}
    assert errors == {
        "empty": "empty audio",
        "stranger": "unknown component 'esc-50'",
        "no-instruction": "missing instruction",
        "no-rate": "metadata is not JSON with a sample_rate",
        "two-clips": "instruction has 2 audio placeholders, expected 1",
    }
    report = score_file(path)
    assert {row.id for row in report.bad_rows} == set(bad)
    assert report.num_scored == {component: 3}


def _cli(args, tmp_path, **kwargs):
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "naturelm.cli", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def test_cli_run_killed_midway_resumes_without_duplicates(mini_beans_zero, mini_beans_zero_dir, tmp_path, capsys):
    output = tmp_path / "results"
    args = ["evaluate", "beans-zero", "--smoke", "--dataset", str(mini_beans_zero_dir), "--output-dir", str(output),
            "--batch-size", "1", "--max-new-tokens", "8"]
    predictions = output / "predictions.jsonl"
    process = _cli(args, tmp_path)
    deadline = time.monotonic() + 300
    while not (predictions.exists() and predictions.read_text().count("\n") >= 2):
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    journal = predictions.with_name(predictions.name + ".progress").read_text().splitlines()[1:]
    done_before = sum(len(json.loads(entry)["ids"]) for entry in journal)
    assert done_before < len(mini_beans_zero), "the run finished before it could be killed"

    # in-process from here (the kill needed a real process): an existing file needs --resume, then it completes
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0
    stdout, stderr = capsys.readouterr()
    assert f"{done_before} already in" in stderr
    records = _lines(predictions)
    assert sorted(r["id"] for r in records) == sorted(mini_beans_zero["id"])
    metrics = json.loads((output / "metrics.json").read_text())
    assert set(metrics["metrics"]) == set(mini_beans_zero["dataset_name"])
    assert metrics["label_sets"].startswith("dataset")
    # the candidate labels of every classification and detection component: its distinct answers
    assert json.loads((output / "labels.json").read_text()) == {
        name: sorted({o for o, n in zip(mini_beans_zero["output"], mini_beans_zero["dataset_name"]) if n == name})
        for name in _components(mini_beans_zero) if COMPONENTS[name].task != "captioning"
    }
    assert all(f"| {name}" in stdout for name in _components(mini_beans_zero))
    assert (output / "metrics.md").read_text().strip() == stdout.strip()


def test_cli_score_reproduces_the_official_metrics(beans_metrics_dir, tmp_path, capsys):
    official = json.loads((beans_metrics_dir / "metrics.json").read_text())["metrics"]
    output = tmp_path / "metrics.json"
    assert main(["evaluate", "score", str(beans_metrics_dir / "predictions.jsonl"), "--output", str(output)]) == 0
    scored = json.loads(output.read_text())["metrics"]
    for component, expected in official.items():
        assert scored[component] == pytest.approx(expected, abs=1e-6)
    out = capsys.readouterr().out
    assert all(f"| {component}" in out for component in official), out
    assert main(["evaluate", "score", str(tmp_path / "missing.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err

    records = _lines(beans_metrics_dir / "predictions.jsonl")
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({name: sorted({r["label"] for r in records if r["dataset_name"] == name})
                                  for name in official}))
    args = ["evaluate", "score", str(beans_metrics_dir / "predictions.jsonl"), "--output", str(output)]
    assert main([*args, "--labels", str(labels)]) == 0
    with_labels = json.loads(output.read_text())
    assert with_labels["metrics"] == scored and with_labels["label_sets"] == f"file {labels}"
    labels.write_text(json.dumps(list(official)))  # a list of names, not a mapping
    assert main([*args, "--labels", str(labels)]) == 2
    assert "mapping each component" in capsys.readouterr().err


def test_evaluate_without_the_eval_extra_says_how_to_install_it(beans_metrics_dir, monkeypatch, capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    def without_levenshtein(name, *args):
        return None if name == "Levenshtein" else find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_levenshtein)
    assert main(["evaluate", "score", str(beans_metrics_dir / "predictions.jsonl")]) == 2
    error = capsys.readouterr().err
    assert "needs Levenshtein" in error and "naturelm[eval]" in error


def test_cli_without_the_dataset_explains_how_to_get_it(tmp_path):
    process = _cli(["evaluate", "beans-zero", "--smoke", "--output-dir", str(tmp_path / "out")], tmp_path)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 2 and "Traceback" not in stderr
    assert "EarthSpeciesProject/BEANS-Zero" in stderr and "save_to_disk" in stderr and "--dataset" in stderr
