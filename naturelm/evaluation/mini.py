"""
A mini BEANS-Zero built from a folder of recordings, in the exact schema of `EarthSpeciesProject/BEANS-Zero`, for
tests, smoke runs and the notebook. Fourteen rows over six components chosen to cover every path of the evaluation:
classification with 5-s and 3-s clips (esc50, watkins), detection with the generic prompt (enabirds, 34 labels) and
with its own prompt (gibbons, 3 labels + None), captioning, and counting (zf-indiv); clips shorter and longer than
their component's length, and the components' own sampling rates. The recordings are not those of BEANS-Zero and
the reference answers are illustrative: the set checks the machinery, not a model.
"""

import json
import os
from pathlib import Path

import numpy as np
import soundfile
import soxr

from processing_naturelm import AUDIO_SPAN

from .components import COMPONENTS

# Component -> (sampling rate of its rows, instruction text, source dataset, license).
_COMPONENT_ROWS = {
    "esc50": (44100, "What is the sound in the audio? Answer:", "esc50", "CC-BY-NC"),
    "watkins": (44100, "What is the common name for the focal species in the audio? Answer:", "Watkins",
                "free for personal/academic uses"),
    "enabirds": (32000, "Which of these, if any, are present in the audio recording? "
                 + ", ".join(COMPONENTS["enabirds"].detection_labels) + ", None", "Enabirds", "CC0"),
    "gibbons": (9600, "Which of these, if any, are present in the audio recording? "
                + ", ".join(COMPONENTS["gibbons"].detection_labels), "Hainan Gibbons", "CC-BY-NC-SA"),
    "captioning": (16000, "Caption the audio.", "iNaturalist", "CC-BY"),
    "zf-indiv": (16000, "How many zebra finches are vocalizing in the audio, One or More? Answer:",
                 "Elie and Theunissen 2016", "CC-BY"),
}

# (component, recording, start s, end s, reference answer)
_ROWS = (
    ("esc50", "484366__spacejoe__bird-3.wav", 0.0, None, "chirping_birds"),
    ("esc50", "nri-GreenTreeFrogEvergladesNP.mp3", 0.0, 7.0, "frog"),
    ("esc50", "nri-StreamMUWO.mp3", 0.0, None, "water_drops"),
    ("watkins", "nri-battlesounds.mp3", 0.0, None, "Killer Whale"),
    ("watkins", "nri-SensationJazz.mp3", 2.0, 4.0, "Bottlenose Dolphin"),
    ("enabirds", "yell-YELLAMRO20160506SM3.mp3", 0.0, 12.0, "American Robin"),
    ("enabirds", "yell-YELLAMRO20160506SM3.mp3", 20.0, 28.0, "American Robin, Other Bird"),
    ("enabirds", "nri-StreamMUWO.mp3", 0.0, None, "None"),
    ("gibbons", "nri-battlesounds.mp3", 0.0, None, "None"),
    ("gibbons", "nri-SensationJazz.mp3", 0.0, None, "Gibbon duet"),
    ("captioning", "Lazuli_Bunting_yell-YELLLAZB20160625SM303143.mp3", 0.0, None,
     "A Lazuli Bunting sings a bright jumbled song"),
    ("captioning", "nri-GreenTreeFrogEvergladesNP.mp3", 0.0, None, "Green treefrogs call in a loud chorus"),
    ("zf-indiv", "yell-YELLFLBCSACR20075171.mp3", 0.0, 10.0, "One"),
    ("zf-indiv", "yell-YELLWolfvCar20160111T22ms2.mp3", 5.0, 15.0, "More"),
)



def mini_beans_zero_features():
    """The BEANS-Zero columns and their types."""
    import datasets

    text = datasets.Value("string")
    return datasets.Features(
        {
            "source_dataset": text,
            "audio": datasets.Sequence(datasets.Value("float32")),
            "id": text,
            "created_at": text,
            "metadata": text,
            "file_name": text,
            "instruction": text,
            "instruction_text": text,
            "output": text,
            "task": text,
            "dataset_name": text,
            "license": text,
        }
    )


def _read(path: Path, start: float, end: float | None, sampling_rate: int) -> np.ndarray:
    audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)[int(start * rate) : None if end is None else int(end * rate)]
    return soxr.resample(audio, rate, sampling_rate).astype(np.float32) if rate != sampling_rate else audio


def build_mini_beans_zero(audio_dir: str | os.PathLike):
    """
    Builds the mini BEANS-Zero from the recordings in `audio_dir` (the project's `../shared/audio`).

    Returns:
        `datasets.Dataset` with the BEANS-Zero columns; `save_to_disk` or `to_parquet` it to get a local copy that
        `naturelm evaluate beans-zero --dataset` reads.
    """
    import datasets

    audio_dir = Path(audio_dir)
    missing = sorted({name for _, name, *_ in _ROWS if not (audio_dir / name).is_file()})
    if missing:
        raise FileNotFoundError(f"{audio_dir} lacks the recording(s) {', '.join(missing)}.")
    columns: dict[str, list] = {name: [] for name in mini_beans_zero_features()}
    counters: dict[str, int] = {}
    for component, file_name, start, end, output in _ROWS:
        sampling_rate, question, source, license_ = _COMPONENT_ROWS[component]
        audio = _read(audio_dir / file_name, start, end, sampling_rate)
        index = counters[component] = counters.get(component, -1) + 1
        row = {
            "source_dataset": source,
            "audio": audio,
            "id": f"mini-{component}-{index}",
            "created_at": "2025-03-13T17:58:52.628742+00:00",
            "metadata": json.dumps({"sample_rate": sampling_rate, "duration": round(audio.size / sampling_rate, 6)}),
            "file_name": file_name,
            "instruction": f"{AUDIO_SPAN} {question}",
            "instruction_text": question,
            "output": output,
            "task": COMPONENTS[component].task,
            "dataset_name": component,
            "license": license_,
        }
        for key, value in row.items():
            columns[key].append(value)
    return datasets.Dataset.from_dict(columns, features=mini_beans_zero_features())


__all__ = ["build_mini_beans_zero", "mini_beans_zero_features"]
