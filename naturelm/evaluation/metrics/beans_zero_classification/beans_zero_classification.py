"""BEANS-Zero classification metric: official answer matching, then Accuracy, weighted Precision / Recall / F1 and
Top-1 Accuracy."""

import datasets
import evaluate

from naturelm.evaluation.classification import classification_metrics
from naturelm.evaluation.postprocessing import match_predictions

_CITATION = """\
@inproceedings{robinson2025naturelm,
  title     = {NatureLM-audio: an Audio-Language Foundation Model for Bioacoustics},
  author    = {David Robinson and Marius Miron and Masato Hagiwara and Olivier Pietquin},
  booktitle = {Proceedings of the International Conference on Learning Representations (ICLR)},
  year      = {2025},
  url       = {https://openreview.net/forum?id=hJVdwBpWjt}
}
"""

_DESCRIPTION = """\
Scores free-text answers to a BEANS-Zero classification component as the official `beans-zero` package (v1.0.0)
does. Each answer is cut at `<|end_of_text|>` and snapped to the nearest candidate label by Levenshtein distance
(candidates: the component's distinct references; equally near candidates resolve to the one that sorts first).
Then: Accuracy; Precision, Recall and F1 Score per label averaged with the reference counts as weights (scikit-learn
"weighted", zero_division=0); Top-1 Accuracy, where an answer also counts when it equals one comma-separated part of
its reference.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): the model's answers, as generated.
    references (`list` of `str`): the expected labels.
    label_set (`list` of `str`, *optional*): the candidate labels answers are snapped to; defaults to the distinct
        references (the official behaviour). Pass a component's full label set to score a subset of its rows.
    match (`bool`, defaults to `True`): snap answers to labels first; `False` scores them verbatim.
Returns:
    Accuracy, Precision, Recall, F1 Score, Top-1 Accuracy (`float` in [0, 1]).
Examples:
    >>> metric = evaluate.load("naturelm/evaluation/metrics/beans_zero_classification")
    >>> metric.compute(predictions=["dog", "cta<|end_of_text|>"], references=["dog", "cat"])["Accuracy"]
    1.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class BeansZeroClassification(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            reference_urls=["https://github.com/earthspecies/beans-zero"],
        )

    def _compute(
        self, predictions: list[str], references: list[str], label_set: list[str] | None = None, match: bool = True
    ) -> dict[str, float]:
        if match:
            predictions = match_predictions(predictions, "classification", label_set, references)
        return classification_metrics(predictions, references)


__all__ = ["BeansZeroClassification"]
