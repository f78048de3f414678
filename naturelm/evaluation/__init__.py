"""BEANS-Zero evaluation: the official answer matching and metrics as shipped `evaluate` modules, scoring of any
predictions file, and the model run over the benchmark (`naturelm evaluate beans-zero`)."""

from .captioning import captioning_metrics, cider_d, spice_unavailable_reason
from .classification import classification_metrics
from .components import COMPONENTS, BeansZeroComponent, get_component, instruction_for
from .detection import detection_metrics
from .errors import EvaluationError
from .metrics import load_metric, metric_path
from .postprocessing import LabelMatcher, candidate_labels, match_predictions
from .predictions import BadRow, PredictionsWriter, completed_ids, read_predictions
from .scoring import BeansZeroReport, read_label_sets, score_file, score_predictions

__all__ = [
    "COMPONENTS",
    "BadRow",
    "BeansZeroComponent",
    "BeansZeroReport",
    "EvaluationError",
    "LabelMatcher",
    "PredictionsWriter",
    "candidate_labels",
    "captioning_metrics",
    "cider_d",
    "classification_metrics",
    "completed_ids",
    "detection_metrics",
    "get_component",
    "instruction_for",
    "load_metric",
    "match_predictions",
    "metric_path",
    "read_label_sets",
    "read_predictions",
    "score_file",
    "score_predictions",
    "spice_unavailable_reason",
]
