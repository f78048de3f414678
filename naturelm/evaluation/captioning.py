"""
Captioning metrics of BEANS-Zero: CIDEr-D exactly as the official `beans-zero` package computes it (the
pycocoevalcap scorer on raw, whitespace-split captions), and SPICE when its Java tool is installed.

CIDEr-D here: n-grams of 1 to 4 words; tf-idf vectors with document frequencies from the references of the whole
corpus; per n, the clipped cosine `sum(min(h, r) * r) / (|h| |r|)` times the length penalty
`exp(-(len(h) - len(r))^2 / (2 sigma^2))` with sigma = 6, where the "length" is the number of bigrams; averaged over
n and over the references of an item and multiplied by 10. The corpus score is the mean over items. `beans-zero`
divides it by 10 before averaging it with SPICE into SPIDEr.

SPICE needs Java and the `spice-1.0.jar` of pycocoevalcap with its Stanford CoreNLP models in `lib/` (the official
package downloads them and needs Java 8). It is looked for at `spice_jar`, then `$NATURELM_SPICE_JAR`, then inside an
installed `pycocoevalcap`; without it SPICE and SPIDEr are reported as missing (`None`), never as an error.
"""

import importlib.util
import json
import math
import os
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

SPICE_JAR_NAME = "spice-1.0.jar"
SPICE_MODELS_JAR = Path("lib") / "stanford-corenlp-3.6.0-models.jar"

Ngrams = Counter[tuple[str, ...]]


class SpiceUnavailableError(RuntimeError):
    """SPICE cannot run here (no Java, no jar, no CoreNLP models, or the tool failed); the message says why."""


def _ngrams(sentence: str, n: int) -> Ngrams:
    words = sentence.split()
    return Counter(tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def _as_reference_lists(references: Sequence[str | Sequence[str]]) -> list[list[str]]:
    lists = [[r] if isinstance(r, str) else list(r) for r in references]
    if any(not refs for refs in lists):
        raise ValueError("Every caption needs at least one reference.")
    return lists


def cider_d(
    hypotheses: Sequence[str], references: Sequence[str | Sequence[str]], n: int = 4, sigma: float = 6.0
) -> tuple[float, list[float]]:
    """
    CIDEr-D of a corpus of captions.

    Args:
        hypotheses (`Sequence[str]`): one predicted caption per item.
        references (`Sequence[str | Sequence[str]]`): one reference caption, or a list of them, per item.
        n (`int`, defaults to 4): longest n-gram.
        sigma (`float`, defaults to 6.0): width of the length penalty.

    Returns:
        `tuple[float, list[float]]`: the corpus score (mean of the items) and the per-item scores.
    """
    reference_lists = _as_reference_lists(references)
    if len(hypotheses) != len(reference_lists):
        raise ValueError(f"Got {len(hypotheses)} captions but {len(reference_lists)} references.")
    if not hypotheses:
        raise ValueError("Cannot score an empty set of captions.")
    reference_ngrams = [[_ngrams(ref, n) for ref in refs] for refs in reference_lists]
    document_frequency: Counter[tuple[str, ...]] = Counter()
    for refs in reference_ngrams:
        document_frequency.update({gram for ref in refs for gram in ref})
    log_num_documents = math.log(float(len(reference_ngrams)))

    def vectorize(counts: Ngrams) -> tuple[list[dict], list[float], int]:
        vector: list[dict] = [{} for _ in range(n)]
        squared = [0.0] * n
        num_bigrams = 0
        for gram, term_frequency in counts.items():
            order = len(gram) - 1
            weight = float(term_frequency) * (log_num_documents - math.log(max(1.0, document_frequency[gram])))
            vector[order][gram] = weight
            squared[order] += weight**2
            if order == 1:
                num_bigrams += term_frequency
        return vector, [math.sqrt(s) for s in squared], num_bigrams

    def similarity(hyp: tuple, ref: tuple) -> np.ndarray:
        (hyp_vec, hyp_norm, hyp_len), (ref_vec, ref_norm, ref_len) = hyp, ref
        penalty = math.e ** (-(float(hyp_len - ref_len) ** 2) / (2 * sigma**2))
        values = np.zeros(n)
        for order in range(n):
            for gram, weight in hyp_vec[order].items():
                ref_weight = ref_vec[order].get(gram, 0.0)
                values[order] += min(weight, ref_weight) * ref_weight
            if hyp_norm[order] != 0 and ref_norm[order] != 0:
                values[order] /= hyp_norm[order] * ref_norm[order]
            values[order] *= penalty
        return values

    scores = []
    for hypothesis, refs in zip(hypotheses, reference_ngrams):
        hyp = vectorize(_ngrams(hypothesis, n))
        total = sum((similarity(hyp, vectorize(ref)) for ref in refs), np.zeros(n))
        scores.append(float(np.mean(total)) / len(refs) * 10.0)
    return float(np.mean(scores)), scores


def find_spice_jar(spice_jar: str | os.PathLike | None = None) -> Path | None:
    """The SPICE jar to use: `spice_jar`, `$NATURELM_SPICE_JAR`, or the one inside an installed pycocoevalcap."""
    if spice_jar is None:
        spice_jar = os.environ.get("NATURELM_SPICE_JAR")
    if spice_jar is None:
        spec = importlib.util.find_spec("pycocoevalcap")
        if spec is None or not spec.submodule_search_locations:
            return None
        spice_jar = Path(next(iter(spec.submodule_search_locations))) / "spice" / SPICE_JAR_NAME
    return Path(spice_jar)


def spice_unavailable_reason(spice_jar: str | os.PathLike | None = None) -> str | None:
    """Why SPICE cannot run here, or `None` when Java, the jar and its CoreNLP models are all present."""
    jar = find_spice_jar(spice_jar)
    if jar is None:
        return (
            "SPICE not computed: no SPICE jar (install pycocoevalcap with its Stanford models, or set "
            "NATURELM_SPICE_JAR)."
        )
    if not jar.is_file():
        return f"SPICE not computed: {jar} does not exist."
    if not (jar.parent / SPICE_MODELS_JAR).is_file():
        return f"SPICE not computed: the Stanford CoreNLP models ({jar.parent / SPICE_MODELS_JAR}) are missing."
    if shutil.which("java") is None:
        return "SPICE not computed: no `java` on PATH (SPICE needs Java 8)."
    return None


def spice(
    hypotheses: Sequence[str], references: Sequence[str | Sequence[str]], spice_jar: str | os.PathLike | None = None
) -> tuple[float, list[float]]:
    """
    SPICE F-scores by the Java tool, as pycocoevalcap runs it (`-subset -silent`, 8 GB heap).

    Returns:
        `tuple[float, list[float]]`: the mean and the per-item scores (NaN where SPICE gives none).

    Raises:
        `SpiceUnavailableError`: when SPICE is not installed here or the tool fails.
    """
    reason = spice_unavailable_reason(spice_jar)
    if reason is not None:
        raise SpiceUnavailableError(reason)
    jar = find_spice_jar(spice_jar)
    reference_lists = _as_reference_lists(references)
    items = [
        {"image_id": f"item{i:08d}", "test": hypothesis, "refs": refs}
        for i, (hypothesis, refs) in enumerate(zip(hypotheses, reference_lists))
    ]
    with tempfile.TemporaryDirectory() as folder:
        in_file, out_file = Path(folder) / "input.json", Path(folder) / "output.json"
        in_file.write_text(json.dumps(items))
        command = ["java", "-jar", "-Xmx8G", str(jar), str(in_file), "-out", str(out_file), "-subset", "-silent"]
        try:
            result = subprocess.run(command, cwd=jar.parent, capture_output=True, text=True)
        except OSError as error:
            raise SpiceUnavailableError(f"SPICE not computed: could not start Java ({error}).") from error
        if result.returncode != 0 or not out_file.is_file():
            tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
            raise SpiceUnavailableError(f"SPICE not computed: the tool failed ({' | '.join(tail)}).")
        results = {item["image_id"]: item["scores"]["All"]["f"] for item in json.loads(out_file.read_text())}

    def as_float(value) -> float:
        try:
            return float(value)
        except (TypeError, ValueError):
            return math.nan

    scores = [as_float(results.get(item["image_id"])) for item in items]
    return float(np.mean(scores)), scores


def captioning_metrics(
    hypotheses: Sequence[str],
    references: Sequence[str | Sequence[str]],
    spice_jar: str | os.PathLike | None = None,
    compute_spice: bool = True,
    return_per_item: bool = False,
) -> dict:
    """
    `CIDEr` (CIDEr-D, pycocoevalcap's 0-10 scale), `SPICE` and `SPIDEr` = (CIDEr / 10 + SPICE) / 2, the number
    `beans-zero` reports as `spider_score`. When SPICE cannot run here (see `spice_unavailable_reason`) or
    `compute_spice` is off, `SPICE` and `SPIDEr` are `None` and `SPICE_missing` says why. With `return_per_item`,
    `CIDEr_per_item` holds the item scores.
    """
    corpus, per_item = cider_d(hypotheses, references)
    spice_score, missing = None, "SPICE not computed: switched off."
    if compute_spice:
        try:
            spice_score, _ = spice(hypotheses, references, spice_jar)
            missing = None
        except SpiceUnavailableError as error:
            missing = str(error)
    result: dict = {
        "CIDEr": corpus,
        "SPICE": spice_score,
        "SPIDEr": None if spice_score is None else (corpus / 10 + spice_score) / 2,
    }
    if missing is not None:
        result["SPICE_missing"] = missing
    if return_per_item:
        result["CIDEr_per_item"] = per_item
    return result

__all__ = [
    "SpiceUnavailableError",
    "captioning_metrics",
    "cider_d",
    "find_spice_jar",
    "spice",
    "spice_unavailable_reason",
]
