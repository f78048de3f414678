"""
Turning free-text answers into labels, as the official `beans-zero` evaluation does.

Every answer is cut at the first `<|end_of_text|>` and snapped to the nearest candidate label by Levenshtein
distance. The candidates of a component are its distinct reference answers (for detection whole answers such as
`"Blue Jay, Ovenbird"`, plus `"None"`). A detection answer is split at commas and each stripped part is snapped on
its own; a part farther than `MAX_DETECTION_DISTANCE` edits from every candidate becomes `"None"`. Parts are compared
with whole reference answers, as in the official package, so a correct single species only survives if it is some
row's whole answer (in BEANS-Zero nearly every species is).

Tie-breaking (deterministic, unlike the official package, which takes whichever of the equally near labels a Python
`set` happens to yield first): among equally near candidates the one that sorts first (Python string order, i.e. by
Unicode code point) wins.
"""

from collections.abc import Iterable, Sequence

from Levenshtein import distance

from .components import NO_DETECTION, TASKS

END_OF_TEXT = "<|end_of_text|>"
MAX_DETECTION_DISTANCE = 5


def cut_at_end_of_text(text: str, end_token: str = END_OF_TEXT) -> str:
    """Everything before the first `end_token`."""
    return text.split(end_token, 1)[0]


def candidate_labels(references: Iterable[str], task: str) -> list[str]:
    """The sorted candidate labels of a component: its distinct references, plus `"None"` for detection."""
    candidates = set(references)
    if task == "detection":
        candidates.add(NO_DETECTION)
    return sorted(candidates)


class LabelMatcher:
    """
    Snaps answers to the nearest of a fixed set of candidate labels.

    Args:
        candidates (`Iterable[str]`): the labels answers may become (see `candidate_labels`).
        task (`str`): `"classification"` (one label per answer), `"detection"` (comma-separated parts, far parts
            become `"None"`) or `"captioning"` (answers are kept as they are).
        end_token (`str`, defaults to `"<|end_of_text|>"`): answers are cut at its first occurrence.
        max_detection_distance (`int`, defaults to 5): detection parts farther than this become `"None"`.
    """

    def __init__(
        self,
        candidates: Iterable[str],
        task: str,
        end_token: str = END_OF_TEXT,
        max_detection_distance: int = MAX_DETECTION_DISTANCE,
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}.")
        self.task = task
        self.end_token = end_token
        self.max_detection_distance = max_detection_distance
        self.candidates: Sequence[str] = sorted(set(candidates) | ({NO_DETECTION} if task == "detection" else set()))
        self._candidate_set = frozenset(self.candidates)
        if task != "captioning" and not self.candidates:
            raise ValueError("Cannot match answers without any candidate label.")

    def nearest(self, text: str) -> str:
        """The candidate nearest to `text` (cut at the end token); ties go to the candidate that sorts first."""
        text = cut_at_end_of_text(text, self.end_token)
        if text in self._candidate_set:
            return text
        best, best_distance = self.candidates[0], distance(text, self.candidates[0])
        for candidate in self.candidates[1:]:
            if best_distance == 0:
                break
            current = distance(text, candidate, score_cutoff=best_distance)
            if current < best_distance:
                best, best_distance = candidate, current
        if self.task == "detection" and best_distance > self.max_detection_distance:
            return NO_DETECTION
        return best

    def __call__(self, prediction: str) -> str:
        if self.task == "captioning":
            return prediction
        if self.task == "detection":
            return ", ".join(self.nearest(part.strip()) for part in prediction.split(","))
        return self.nearest(prediction)


def match_predictions(
    predictions: Sequence[str], task: str, candidates: Iterable[str] | None = None, references: Sequence[str] = ()
) -> list[str]:
    """Snaps every prediction; the candidates default to those derived from `references`."""
    matcher = LabelMatcher(candidates if candidates is not None else candidate_labels(references, task), task)
    return [matcher(prediction) for prediction in predictions]


__all__ = [
    "END_OF_TEXT",
    "MAX_DETECTION_DISTANCE",
    "LabelMatcher",
    "candidate_labels",
    "cut_at_end_of_text",
    "match_predictions",
]
