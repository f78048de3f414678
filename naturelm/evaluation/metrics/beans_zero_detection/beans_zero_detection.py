"""BEANS-Zero detection metric: official answer matching, then mAP and macro F1 / Recall / Precision over multi-hot
label vectors."""

import datasets
import evaluate

from naturelm.evaluation.detection import detection_metrics
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
Scores free-text answers to a BEANS-Zero detection component (which species are present, comma-separated, or
"None") as the official `beans-zero` package (v1.0.0) does. Each comma-separated part of an answer is cut at
`<|end_of_text|>` and snapped to the nearest candidate answer by Levenshtein distance, or to "None" when farther than
5 edits (candidates: the component's distinct references plus "None", i.e. whole answers such as "Blue Jay,
Ovenbird"; equally near candidates resolve to the one that sorts first). Answers and references become multi-hot
vectors over the labels (the comma-separated parts of the references). mAP: mean over labels of the average
precision, ranking tied 0/1 scores with torch.sort as the official package does; F1, Recall, Precision: per-label
binary scores, macro-averaged.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): the model's answers, as generated.
    references (`list` of `str`): the expected answers, e.g. "Blue Jay, Ovenbird" or "None".
    label_set (`list` of `str`, *optional*): the candidate answers parts are snapped to; defaults to the distinct
        references (the official behaviour). The metrics are always over the labels of the references.
    match (`bool`, defaults to `True`): snap answers to labels first; `False` scores them verbatim.
Returns:
    mAP, F1, Recall, Precision (`float` in [0, 1]).
Examples:
    >>> metric = evaluate.load("naturelm/evaluation/metrics/beans_zero_detection")
    >>> metric.compute(predictions=["Blue Jay", "Ovenbrd", "none"], references=["Blue Jay", "Ovenbird", "None"])["F1"]
    1.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class BeansZeroDetection(evaluate.Metric):
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
            predictions = match_predictions(predictions, "detection", label_set, references)
        return detection_metrics(predictions, references)


__all__ = ["BeansZeroDetection"]
