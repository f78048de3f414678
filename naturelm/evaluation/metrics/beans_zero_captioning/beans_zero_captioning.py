"""BEANS-Zero captioning metric: CIDEr-D as `beans-zero` computes it, SPICE and SPIDEr when SPICE's Java tool is
installed."""

import datasets
import evaluate

from naturelm.evaluation.captioning import captioning_metrics

_CITATION = """\
@inproceedings{vedantam2015cider,
  title     = {CIDEr: Consensus-based Image Description Evaluation},
  author    = {Ramakrishna Vedantam and C. Lawrence Zitnick and Devi Parikh},
  booktitle = {CVPR},
  year      = {2015}
}
"""

_DESCRIPTION = """\
Scores captions of the BEANS-Zero captioning component as the official `beans-zero` package (v1.0.0) does: answers
are used verbatim (no cutting, no matching) and split on whitespace. CIDEr is CIDEr-D (n-grams 1-4, sigma 6, idf from
the references, clipped, x10) as pycocoevalcap computes it; SPIDEr = (CIDEr / 10 + SPICE) / 2. SPICE needs Java and
the pycocoevalcap SPICE jar with its Stanford CoreNLP models (argument `spice_jar`, env NATURELM_SPICE_JAR, or an
installed pycocoevalcap); without them SPICE and SPIDEr are None and SPICE_missing says why.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): the generated captions.
    references (`list` of `str`, or `list` of `list` of `str`): one or several reference captions per item.
    spice_jar (`str`, *optional*): path of `spice-1.0.jar`.
    compute_spice (`bool`, defaults to `True`): try SPICE at all.
    return_per_item (`bool`, defaults to `False`): add `CIDEr_per_item`, the list of item scores.
Returns:
    CIDEr (`float`, 0-10 scale), SPICE and SPIDEr (`float` or `None`), SPICE_missing (`str`, only when missing).
Examples:
    >>> metric = evaluate.load("naturelm/evaluation/metrics/beans_zero_captioning")
    >>> captions = ["a dog barks", "a bird sings"]
    >>> round(metric.compute(predictions=captions, references=captions, compute_spice=False)["CIDEr"], 2)
    7.5
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class BeansZeroCaptioning(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
                datasets.Features(
                    {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
                ),
            ],
            reference_urls=["https://github.com/earthspecies/beans-zero", "https://github.com/salaniz/pycocoevalcap"],
        )

    def _compute(
        self,
        predictions: list[str],
        references: list[str] | list[list[str]],
        spice_jar: str | None = None,
        compute_spice: bool = True,
        return_per_item: bool = False,
    ) -> dict:
        return captioning_metrics(predictions, references, spice_jar, compute_spice, return_per_item)


__all__ = ["BeansZeroCaptioning"]
