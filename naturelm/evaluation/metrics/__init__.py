"""The BEANS-Zero metrics as `evaluate` modules shipped inside the package, so that they load offline:

    >>> from naturelm.evaluation import load_metric
    >>> metric = load_metric("classification")  # evaluate.load() of the module folder
    >>> metric.compute(predictions=["dog<|end_of_text|>", "cta"], references=["dog", "cat"])["Accuracy"]
    1.0
"""

from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent
METRIC_NAMES = {
    "classification": "beans_zero_classification",
    "detection": "beans_zero_detection",
    "captioning": "beans_zero_captioning",
}


def metric_path(task: str) -> Path:
    """The folder of the `evaluate` module for a BEANS-Zero task; `evaluate.load(str(path))` loads it."""
    if task not in METRIC_NAMES:
        raise ValueError(f"No BEANS-Zero metric for task {task!r}; tasks: {', '.join(METRIC_NAMES)}.")
    return METRICS_DIR / METRIC_NAMES[task]


def load_metric(task: str, **kwargs):
    """`evaluate.load` of the shipped module for `task` ("classification", "detection" or "captioning"); keyword
    arguments go to `evaluate.load` (the default keeps everything in memory)."""
    import evaluate

    kwargs.setdefault("keep_in_memory", True)
    return evaluate.load(str(metric_path(task)), **kwargs)


__all__ = ["METRICS_DIR", "METRIC_NAMES", "load_metric", "metric_path"]
