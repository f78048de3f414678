"""
Detection (multi-label) metrics of BEANS-Zero, computed as the official `beans-zero` package does.

Answers and references become multi-hot vectors over the component's labels; an answer has no scores, so every
entry is 0 or 1.

- `mAP`: the mean over labels of the average precision, where a label without any positive reference scores 0.
  With 0/1 scores most rows tie, and the ranking inside a tie decides the value. The official package ranks with
  `torch.sort(descending=True)` (the default, unstable sort); this module calls exactly that routine on the same
  float32 column, so its ranking, and therefore the number, is the official one (deterministic for a given torch
  build; checked against `beans-zero` v1.0.0 numbers).
- `F1`, `Recall`, `Precision`: per-label binary scores (an entry counts as detected when its score is > 0, the
  official sigmoid-and-argmax rule), macro-averaged over the labels.
"""

from collections.abc import Sequence

import numpy as np
import torch

from .components import NO_DETECTION


def detection_vocabulary(references: Sequence[str]) -> list[str]:
    """The labels of multi-hot vectors (official): every comma-separated part of the references, stripped and
    sorted, leaving out references that are `"None"` (any case)."""
    labels = set()
    for answer in references:
        if answer.lower() != NO_DETECTION.lower():
            labels.update(part.strip() for part in answer.split(","))
    return sorted(labels)


def multi_hot(answer: str, index: dict[str, int]) -> np.ndarray:
    """1 for each `", "`-separated part of `answer` that is a known label (official parsing); all zeros for
    `"None"`."""
    vector = np.zeros(len(index), dtype=np.float32)
    if answer.lower() == NO_DETECTION.lower():
        return vector
    for part in answer.split(", "):
        if part in index:
            vector[index[part]] = 1.0
    return vector


def average_precision(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """
    Per-label average precision.

    Args:
        scores (`np.ndarray` of shape `(num_rows, num_labels)`): prediction scores.
        targets (`np.ndarray` of shape `(num_rows, num_labels)`): 0/1 references.

    Returns:
        `np.ndarray` of shape `(num_labels,)`: the mean precision at the rank of each positive (0 without positives).
    """
    columns = torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32))
    ranks = np.arange(1, scores.shape[0] + 1, dtype=np.float64)
    result = np.zeros(scores.shape[1])
    for k in range(scores.shape[1]):
        order = torch.sort(columns[:, k], 0, True).indices.numpy()
        truth = targets[order, k] > 0
        precision = np.cumsum(truth) / ranks
        result[k] = precision[truth].sum() / max(truth.sum(), 1)
    return result


def detection_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """
    Metrics of already matched detection answers, over the labels of the references (`detection_vocabulary`);
    predicted labels outside them count for nothing, as in the official package.

    Args:
        predictions (`Sequence[str]`): matched answers, `", "`-separated labels or `"None"`.
        references (`Sequence[str]`): the references, as many as predictions.

    Returns:
        `dict[str, float]` with `mAP`, `F1`, `Recall` and `Precision`.
    """
    if len(predictions) != len(references):
        raise ValueError(f"Got {len(predictions)} predictions but {len(references)} references.")
    if not references:
        raise ValueError("Cannot score an empty set of predictions.")
    labels = detection_vocabulary(references)
    if not labels:
        raise ValueError("The references name no label (all are 'None'), so there is nothing to detect.")
    index = {label: i for i, label in enumerate(labels)}
    scores = np.stack([multi_hot(p, index) for p in predictions])
    targets = np.stack([multi_hot(r, index) for r in references])

    detected, present = scores > 0, targets > 0
    true_positives = (detected & present).sum(axis=0)
    num_detected, num_present = detected.sum(axis=0), present.sum(axis=0)
    precision = np.divide(true_positives, num_detected, out=np.zeros(len(labels)), where=num_detected > 0)
    recall = np.divide(true_positives, num_present, out=np.zeros(len(labels)), where=num_present > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros(len(labels)), where=both > 0)
    return {
        "mAP": float(average_precision(scores, targets).mean()),
        "F1": float(f1.mean()),
        "Recall": float(recall.mean()),
        "Precision": float(precision.mean()),
    }


__all__ = ["average_precision", "detection_metrics", "detection_vocabulary", "multi_hot"]
