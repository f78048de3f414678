"""BEANS-Zero evaluation: the official answer matching and metrics as shipped `evaluate` modules, scoring of any
predictions file, and the model run over the benchmark (`naturelm evaluate beans-zero`).

Needs the `eval` extra (`datasets`, `evaluate`, `Levenshtein`); names are imported on first use, so that importing
`naturelm` (and running `naturelm infer`) does not need it.
"""

import importlib

_EXPORTS = {
    "captioning_metrics": "captioning",
    "cider_d": "captioning",
    "spice_unavailable_reason": "captioning",
    "classification_metrics": "classification",
    "COMPONENTS": "components",
    "BeansZeroComponent": "components",
    "get_component": "components",
    "instruction_for": "components",
    "detection_metrics": "detection",
    "EvaluationError": "errors",
    "load_metric": "metrics",
    "metric_path": "metrics",
    "LabelMatcher": "postprocessing",
    "candidate_labels": "postprocessing",
    "match_predictions": "postprocessing",
    "BadRow": "predictions",
    "PredictionsWriter": "predictions",
    "read_predictions": "predictions",
    "BeansZeroReport": "scoring",
    "read_label_sets": "scoring",
    "score_file": "scoring",
    "score_predictions": "scoring",
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))


__all__ = sorted(_EXPORTS)
