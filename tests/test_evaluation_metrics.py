"""BEANS-Zero metrics: the official numbers of a reference predictions file (read from the fixture, env
NATURELM_BEANS_METRICS_DIR), the answer matching, each metric's definition, SPICE's optional path, bad rows."""

import json
import os
import stat
import sys

import evaluate
import numpy as np
import pytest
import torch

from naturelm.evaluation import (
    COMPONENTS,
    LabelMatcher,
    captioning_metrics,
    cider_d,
    classification_metrics,
    detection_metrics,
    load_metric,
    metric_path,
    score_file,
    score_predictions,
    spice_unavailable_reason,
)
from naturelm.evaluation.detection import average_precision

TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def official(beans_metrics_dir) -> dict:
    return json.loads((beans_metrics_dir / "metrics.json").read_text())


def test_reproduces_every_official_metric(beans_metrics_dir, official):
    report = score_file(beans_metrics_dir / "predictions.jsonl")
    assert report.bad_rows == []
    assert list(report.metrics) == [name for name in report.metrics if name in official["metrics"]]
    assert set(report.metrics) == set(official["metrics"])
    for component, expected in official["metrics"].items():
        assert set(report.metrics[component]) == set(expected), component
        for name, value in expected.items():
            assert report.metrics[component][name] == pytest.approx(value, abs=TOLERANCE), (component, name)
    lines = (beans_metrics_dir / "predictions.jsonl").read_text().splitlines()
    assert sum(report.num_scored.values()) == len([line for line in lines if line.strip()])


def test_reproduces_cider_corpus_and_item_scores(official):
    cider = official["cider"]
    corpus, items = cider_d(cider["hypotheses"], cider["references"])
    assert corpus == pytest.approx(cider["corpus_score"], abs=TOLERANCE)
    assert items == pytest.approx(cider["per_item"], abs=TOLERANCE)
    # the same through the shipped evaluate module
    result = load_metric("captioning").compute(
        predictions=cider["hypotheses"], references=cider["references"], return_per_item=True, compute_spice=False
    )
    assert result["CIDEr"] == pytest.approx(cider["corpus_score"], abs=TOLERANCE)
    assert result["CIDEr_per_item"] == pytest.approx(cider["per_item"], abs=TOLERANCE)


def test_metric_modules_load_from_their_folder_with_evaluate(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for task, example in {
        "classification": (["dog<|end_of_text|> woof", "cta"], ["dog", "cat"]),
        "detection": (["Blue Jay", "Ovenbrd", "none"], ["Blue Jay", "Ovenbird", "None"]),
    }.items():
        module = evaluate.load(str(metric_path(task)), keep_in_memory=True)
        result = module.compute(predictions=example[0], references=example[1])
        assert all(value == 1.0 for value in result.values()), (task, result)
        assert "Levenshtein" in module.description
    with pytest.raises(ValueError, match="No BEANS-Zero metric"):
        metric_path("counting")


def test_matching_cuts_at_end_of_text_and_snaps_to_the_nearest_label():
    matcher = LabelMatcher(["keyboard_typing", "snoring", "dog"], "classification")
    assert matcher("keyboard_typing<|end_of_text|> extra words") == "keyboard_typing"
    assert matcher("keybad_typicng") == "keyboard_typing"
    assert matcher("The species is dog") == "dog"  # always some label for classification, however far
    assert matcher("") == "dog"


def test_detection_matching_snaps_each_part_and_far_parts_become_none():
    matcher = LabelMatcher(["Blue Jay", "Ovenbird", "Blue Jay, Ovenbird"], "detection")
    assert matcher("Blu Jay, completely unrelated words") == "Blue Jay, None"
    assert matcher("Blue Jay<|end_of_text|> junk, Ovenbrd") == "Blue Jay, Ovenbird"
    assert matcher("Blue Jay,Ovenbird") == "Blue Jay, Ovenbird"
    assert matcher("none") == "None" and matcher("") == "None"
    # parts are compared with whole answers (official): a species that is never a whole answer is lost
    assert LabelMatcher(["Blue Jay, Ovenbird"], "detection")("Blue Jay, Ovenbird") == "None, None"


def test_ties_go_to_the_label_that_sorts_first_whatever_the_candidate_order():
    rng = np.random.default_rng(0)
    labels = ["cat", "bat", "rat", "hat"]  # all one edit from "mat"
    for _ in range(5):
        order = list(rng.permutation(labels))
        assert LabelMatcher(order, "classification")("mat") == "bat"
        assert LabelMatcher(order, "detection")("mat, zat") == "bat, bat"


def test_classification_metrics_follow_their_definitions():
    predictions = ["a", "a", "b", "c"]
    references = ["a", "b", "b", "b, d"]
    metrics = classification_metrics(predictions, references)
    assert metrics["Accuracy"] == 2 / 4
    # label a: P 1/2 R 1/1; b: P 1/1 R 1/2; "b, d": P 0 (never predicted) R 0; c: no support -> weight 0
    assert metrics["Precision"] == pytest.approx((1 * 0.5 + 2 * 1.0 + 1 * 0.0) / 4)
    assert metrics["Recall"] == pytest.approx((1 * 1.0 + 2 * 0.5 + 1 * 0.0) / 4)
    assert metrics["F1 Score"] == pytest.approx((1 * (2 / 3) + 2 * (2 / 3) + 0) / 4)
    # Top-1 also accepts one comma-separated part of the reference ("c" is not one of "b", "d")
    assert metrics["Top-1 Accuracy"] == 2 / 4
    assert classification_metrics(["d"], ["b, d"])["Top-1 Accuracy"] == 1.0
    # ... but not the whole label when it holds a comma (official; e.g. Watkins' "Beluga, White Whale")
    exact = classification_metrics(["b, d"], ["b, d"])
    assert exact["Accuracy"] == 1.0 and exact["Top-1 Accuracy"] == 0.0
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        classification_metrics(["a", "b"], ["a"])


def test_detection_metrics_follow_their_definitions():
    references = ["Blue Jay, Ovenbird", "Ovenbird", "None", "Wood Thrush"]
    perfect = detection_metrics(references, references)
    assert perfect == {"mAP": 1.0, "F1": 1.0, "Recall": 1.0, "Precision": 1.0}
    silent = detection_metrics(["None"] * 4, references)
    assert silent["F1"] == silent["Recall"] == silent["Precision"] == 0.0
    partial = detection_metrics(["Blue Jay", "Ovenbird", "Wood Thrush", "None"], references)
    # Blue Jay: P 1 R 1; Ovenbird: P 1 R 1/2; Wood Thrush: P 0 R 0
    assert partial["Precision"] == pytest.approx(2 / 3)
    assert partial["Recall"] == pytest.approx(1.5 / 3)
    with pytest.raises(ValueError, match="nothing to detect"):
        detection_metrics(["None"], ["None"])


def test_average_precision_ranks_ties_as_torch_sort_does():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 2, size=(40, 3)).astype(np.float32)
    targets = rng.integers(0, 2, size=(40, 3)).astype(np.float32)
    expected = []
    for k in range(3):  # the official per-label loop, written with torch
        order = torch.sort(torch.from_numpy(scores)[:, k], 0, True).indices
        truth = torch.from_numpy(targets)[order, k]
        precision = truth.cumsum(0) / torch.arange(1, 41).float()
        expected.append((precision[truth.bool()].sum() / max(truth.sum(), 1)).item())
    assert average_precision(scores, targets) == pytest.approx(expected, abs=1e-6)


def _fake_spice(tmp_path, exit_code: int = 0):
    """A SPICE jar folder with its models jar, and a `java` on PATH that writes F-scores 0.5 (or fails)."""
    jar = tmp_path / "spice" / "spice-1.0.jar"
    (jar.parent / "lib").mkdir(parents=True)
    jar.write_bytes(b"")
    (jar.parent / "lib" / "stanford-corenlp-3.6.0-models.jar").write_bytes(b"")
    java = tmp_path / "bin" / "java"
    java.parent.mkdir()
    java.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"if {exit_code}: sys.exit({exit_code})\n"
        "args = sys.argv[1:]\n"
        "items = json.load(open(args[3]))\n"
        "json.dump([{'image_id': i['image_id'], 'scores': {'All': {'f': 0.5}}} for i in items], "
        "open(args[args.index('-out') + 1], 'w'))\n"
    )
    java.chmod(java.stat().st_mode | stat.S_IEXEC)
    return jar, java.parent


def test_spice_is_reported_missing_never_an_error(tmp_path, monkeypatch):
    monkeypatch.delenv("NATURELM_SPICE_JAR", raising=False)
    result = captioning_metrics(["a bird sings"], ["a bird sings"], spice_jar=tmp_path / "nowhere.jar")
    assert result["SPICE"] is None and result["SPIDEr"] is None
    assert "does not exist" in result["SPICE_missing"]
    jar, bin_dir = _fake_spice(tmp_path)
    monkeypatch.setenv("PATH", "")
    assert "java" in spice_unavailable_reason(jar)
    monkeypatch.setenv("PATH", str(bin_dir))
    assert spice_unavailable_reason(jar) is None
    (jar.parent / "lib" / "stanford-corenlp-3.6.0-models.jar").unlink()
    assert "CoreNLP models" in spice_unavailable_reason(jar)


def test_spice_and_spider_when_the_tool_is_there(tmp_path, monkeypatch):
    jar, bin_dir = _fake_spice(tmp_path)
    monkeypatch.setenv("PATH", str(bin_dir) + os.pathsep + os.environ["PATH"])
    monkeypatch.setenv("NATURELM_SPICE_JAR", str(jar))
    hypotheses, references = ["a bird sings a song", "a frog croaks"], ["a bird sings a song", "a dog barks"]
    result = load_metric("captioning").compute(predictions=hypotheses, references=references)
    assert "SPICE_missing" not in result
    assert result["SPICE"] == 0.5
    assert result["SPIDEr"] == pytest.approx((cider_d(hypotheses, references)[0] / 10 + 0.5) / 2)


def test_a_failing_spice_tool_is_reported(tmp_path, monkeypatch):
    jar, bin_dir = _fake_spice(tmp_path, exit_code=3)
    monkeypatch.setenv("PATH", str(bin_dir) + os.pathsep + os.environ["PATH"])
    result = captioning_metrics(["a bird"], ["a bird"], spice_jar=jar)
    assert result["SPICE"] is None and "failed" in result["SPICE_missing"]


def _records(beans_metrics_dir) -> list[dict]:
    lines = (beans_metrics_dir / "predictions.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_bad_rows_are_reported_with_their_id_and_the_rest_is_scored(beans_metrics_dir, tmp_path):
    good = _records(beans_metrics_dir)
    component = good[0]["dataset_name"]  # bad rows of a scored component must leave its metrics alone
    bad = [
        {"id": "no-prediction", "dataset_name": component, "label": "dog"},
        {"id": "number", "dataset_name": component, "label": "dog", "prediction": 3},
        {"id": "null", "dataset_name": component, "label": "dog", "prediction": None},
        {"id": "elsewhere", "dataset_name": "not-a-component", "label": "dog", "prediction": "dog"},
        {"id": "crashed", "dataset_name": component, "error": "empty audio"},
        {**good[0], "prediction": "a second answer for the same id"},
    ]
    assert "not-a-component" not in COMPONENTS and not {r["id"] for r in bad[:5]} & {r["id"] for r in good}
    middle = len(good) // 2
    path = tmp_path / "predictions.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in good[:middle] + bad + good[middle:]) + "\n{not json\n")
    report = score_file(path)
    reasons = {row.id: row.reason for row in report.bad_rows}
    assert reasons["no-prediction"] == "missing prediction"
    assert "not a string" in reasons["number"] and "int" in reasons["number"]
    assert reasons["null"] == "missing prediction"
    assert "unknown component" in reasons["elsewhere"]
    assert "empty audio" in reasons["crashed"]
    assert reasons[good[0]["id"]].startswith("repeated id")
    assert any(row.id is None and row.line == len(good) + len(bad) + 1 for row in report.bad_rows)
    num_bad = len(bad) + 1  # and the unreadable line
    assert len(report.bad_rows) == num_bad
    assert report.metrics == score_predictions(good).metrics
    table = report.format_table()
    assert "no-prediction" in table and f"{num_bad} bad row(s)" in table
    assert json.loads(json.dumps(report.to_dict()))["num_bad_rows"] == num_bad


def test_given_label_sets_change_only_the_candidates(beans_metrics_dir):
    records = _records(beans_metrics_dir)
    names = [name for name in dict.fromkeys(r["dataset_name"] for r in records)
             if COMPONENTS[name].task == "classification"]
    assert names, "the fixture needs a classification component"
    lowered = []
    for name in names:
        rows = [r for r in records if r["dataset_name"] == name]
        labels = sorted({r["label"] for r in rows})
        same = score_predictions(rows, {name: labels})
        assert same.metrics == score_predictions(rows).metrics and same.label_sets == "given", name
        # one candidate: every answer snaps to it, so the accuracy is the share of rows with that label
        narrowed = score_predictions(rows, {name: labels[:1]}).metrics[name]["Accuracy"]
        assert narrowed == pytest.approx(sum(r["label"] == labels[0] for r in rows) / len(rows), abs=TOLERANCE), name
        lowered.append(narrowed < same.metrics[name]["Accuracy"])
    assert any(lowered), "narrowing the candidates never changed a score"
