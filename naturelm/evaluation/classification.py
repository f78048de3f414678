"""Classification metrics of BEANS-Zero, computed as the official `beans-zero` package does (scikit-learn's
definitions, written out here with numpy)."""

from collections.abc import Sequence

import numpy as np


def classification_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """
    Metrics of already matched single-label predictions.

    - `Accuracy`: the fraction of predictions equal to their reference.
    - `Precision`, `Recall`, `F1 Score`: per-label scores over the labels of predictions and references together,
      averaged with the labels' reference counts as weights (scikit-learn's `average="weighted"`, with
      `zero_division=0`: a label never predicted has precision 0).
    - `Top-1 Accuracy`: the fraction of predictions equal to any comma-separated part of their reference. (For a
      label that itself contains a comma, e.g. Watkins' `"Beluga, White Whale"`, an exact answer does not count,
      exactly as in the official package.)

    Args:
        predictions (`Sequence[str]`): matched predictions.
        references (`Sequence[str]`): the references, as many as predictions.

    Returns:
        `dict[str, float]` with the five metrics above.
    """
    if len(predictions) != len(references):
        raise ValueError(f"Got {len(predictions)} predictions but {len(references)} references.")
    if not references:
        raise ValueError("Cannot score an empty set of predictions.")
    labels = sorted(set(predictions) | set(references))
    index = {label: i for i, label in enumerate(labels)}
    predicted = np.array([index[p] for p in predictions])
    true = np.array([index[r] for r in references])
    hits = predicted == true
    true_positives = np.bincount(true[hits], minlength=len(labels)).astype(np.float64)
    predicted_counts = np.bincount(predicted, minlength=len(labels)).astype(np.float64)
    support = np.bincount(true, minlength=len(labels)).astype(np.float64)

    precision = np.divide(true_positives, predicted_counts, out=np.zeros_like(support), where=predicted_counts > 0)
    recall = np.divide(true_positives, support, out=np.zeros_like(support), where=support > 0)
    denominator = predicted_counts + support
    f1 = np.divide(2 * true_positives, denominator, out=np.zeros_like(support), where=denominator > 0)
    weights = support / support.sum()

    top1 = sum(p in [part.strip() for part in r.split(",")] for p, r in zip(predictions, references))
    return {
        "Accuracy": float(hits.mean()),
        "Precision": float(precision @ weights),
        "Recall": float(recall @ weights),
        "F1 Score": float(f1 @ weights),
        "Top-1 Accuracy": top1 / len(references),
    }


__all__ = ["classification_metrics"]
