"""Tests for `NatureLMFeatureExtractor`: parity with the original BEATs front end and with torchaudio."""

import ast
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import torchaudio
import torchaudio.compliance.kaldi as ta_kaldi

import feature_extraction_naturelm as module
from audio_naturelm import resample, to_mono
from feature_extraction_naturelm import NatureLMFeatureExtractor


REPO = Path(__file__).resolve().parents[1]
FP32_EPS = torch.finfo(torch.float32).eps


@pytest.fixture(scope="module")
def extractor() -> NatureLMFeatureExtractor:
    return NatureLMFeatureExtractor()


@pytest.fixture(scope="module")
def recordings(audio_recordings) -> list[tuple[str, np.ndarray, int]]:
    """(name, samples of shape (time, channels) as float32, sampling rate) for every recording of the audio fixture."""
    return [(r.name, *soundfile.read(r.path, dtype="float32", always_2d=True)) for r in audio_recordings]


def beats_fbank(waveform: torch.Tensor) -> torch.Tensor:
    """The original BEATs `preprocess` of one 16 kHz clip, with torchaudio."""
    fbank = ta_kaldi.fbank(
        waveform[None] * 2**15, num_mel_bins=128, sample_frequency=16000, frame_length=25, frame_shift=10
    )
    return (fbank - 15.41663) / (2 * 6.55582)


def fixed_length(waveform: torch.Tensor, num_samples: int) -> torch.Tensor:
    waveform = waveform[:num_samples]
    return torch.nn.functional.pad(waveform, (0, num_samples - waveform.shape[0])).clamp(-1, 1)


def fp32_rounding_tolerance(fbank: torch.Tensor, extractor: NatureLMFeatureExtractor) -> torch.Tensor:
    """
    How far fp32 rounding alone can move each normalised fbank entry. A frame's fp32 FFT carries an absolute error
    of about eps * sqrt(frame energy), so a mel bin holding a share s of its frame's energy has a log uncertain by
    about eps / sqrt(s). Where s < ~1e-8 this exceeds 1e-4 and two correct fp32 implementations (or the same one
    on another CPU / FFT library) differ: torchaudio itself on this machine differs from the recorded reference
    there by up to ~1e-3.
    """
    log_energy = fbank * (2 * extractor.std) + extractor.mean
    log_share = log_energy - log_energy.logsumexp(dim=-1, keepdim=True)
    return FP32_EPS * torch.exp(-0.5 * log_share) / (2 * extractor.std)


def test_parity_with_original_fbank(extractor: NatureLMFeatureExtractor, reference: dict[str, torch.Tensor]) -> None:
    expected = reference["fbank"]
    features = extractor(list(reference["waveform"]), sampling_rate=16000, return_tensors="pt").input_features
    assert features.dtype == torch.float32
    assert features.shape == expected.shape
    error = (features - expected).abs()
    tolerance = 1e-4 + fp32_rounding_tolerance(expected, extractor)
    worst = (error - tolerance).argmax()
    assert (error <= tolerance).all(), (
        f"max abs error {error.max():.2e}; entry {np.unravel_index(worst.item(), error.shape)} is off by "
        f"{error.flatten()[worst]:.2e} > allowed {tolerance.flatten()[worst]:.2e}"
    )
    well_conditioned = fp32_rounding_tolerance(expected, extractor) < 1e-5
    assert error[well_conditioned].max() <= 1e-4


def test_matches_torchaudio_on_recordings(
    extractor: NatureLMFeatureExtractor, recordings: list[tuple[str, np.ndarray, int]]
) -> None:
    durations = [len(samples) / rate for _, samples, rate in recordings]
    assert min(durations) < extractor.max_length_seconds < max(durations), "need a short and a long recording"
    assert any(samples.shape[1] > 1 for _, samples, _ in recordings), "need a stereo recording"
    assert any(rate != extractor.sampling_rate for _, _, rate in recordings), "need a recording to resample"

    for name, samples, rate in recordings:
        # mixed and resampled by the package's one audio path (soxr), then BEATs' fbank by torchaudio
        waveform = torch.from_numpy(to_mono(samples, rate, extractor.sampling_rate))
        expected = beats_fbank(fixed_length(waveform, extractor.num_samples))

        # at 16 kHz: the fbank alone (short clips padded) ...
        features = extractor(waveform.numpy(), sampling_rate=extractor.sampling_rate, return_tensors="pt")
        assert (features.input_features[0] - expected).abs().max() <= 1e-4, name
        # ... and end to end from the decoded file, layout (time, channels)
        features = extractor(samples, sampling_rate=rate, return_tensors="pt").input_features[0]
        assert (features - expected).abs().max() <= 1e-4, name


@pytest.mark.parametrize("rate", [22050, 44100, 48000, 8000, 11025, 96000])
def test_resampling_is_soxr(rate: int) -> None:
    """One resampler for every door: soxr's high-quality resampler, as files stream through it."""
    import soxr

    waveform = np.random.default_rng(rate).uniform(-1, 1, rate * 2 + 1234).astype(np.float32)
    result = resample(waveform, rate, 16000)
    assert result.dtype == np.float32 and len(result) == round(len(waveform) * 16000 / rate)
    assert np.array_equal(result, soxr.resample(waveform, rate, 16000))
    # band-limited like torchaudio's sinc resampler, to well within the 16-bit noise floor on a tone
    tone = np.sin(2 * np.pi * 440 * np.arange(rate * 2) / rate).astype(np.float32)
    reference = torchaudio.functional.resample(torch.from_numpy(tone).double(), rate, 16000).numpy()
    inner = slice(1000, -1000)
    assert np.abs(resample(tone, rate, 16000)[inner] - reference[: len(resample(tone, rate, 16000))][inner]).max() < 1e-3


@pytest.mark.parametrize("rate", [16000, 44100])
def test_stereo_is_averaged_in_either_layout(extractor: NatureLMFeatureExtractor, rate: int) -> None:
    stereo = np.random.default_rng(0).uniform(-0.5, 0.5, size=(2, rate * 3)).astype(np.float32)
    mono = extractor(stereo.astype(np.float64).mean(axis=0), sampling_rate=rate).input_features
    for layout in (stereo, stereo.T, torch.from_numpy(stereo), torch.from_numpy(stereo.T.copy())):
        np.testing.assert_allclose(extractor(layout, sampling_rate=rate).input_features, mono, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "dtype", [np.float16, np.float32, np.float64, torch.float16, torch.bfloat16, torch.float32, torch.float64]
)
def test_accepted_float_dtypes(extractor: NatureLMFeatureExtractor, dtype: np.dtype | torch.dtype) -> None:
    clip = np.random.default_rng(0).uniform(-0.5, 0.5, 16000)
    clip = torch.from_numpy(clip).to(dtype) if isinstance(dtype, torch.dtype) else clip.astype(dtype)
    # the same samples, exactly, in float64
    expected = extractor(torch.as_tensor(clip).double().numpy(), sampling_rate=16000).input_features
    features = extractor(clip, sampling_rate=16000).input_features
    assert features.dtype == np.float32
    np.testing.assert_allclose(features, expected, rtol=0, atol=1e-6)


GOOD = np.zeros(1600, dtype=np.float32)


@pytest.mark.parametrize(
    ("raw_speech", "sampling_rate", "expected_message"),
    [
        (GOOD, None, "sampling_rate"),
        (GOOD, 0, "sampling_rate"),
        (GOOD, -16000, "sampling_rate"),
        (GOOD, 22050.5, "sampling_rate"),
        ([], 16000, "empty list"),
        ([GOOD, np.zeros(0, dtype=np.float32)], 16000, "Clip 1 is empty"),
        ([GOOD, torch.zeros(2, 0)], 16000, "Clip 1 is empty"),
        ([GOOD, np.array([0.1, np.nan], dtype=np.float32)], 16000, "Clip 1 contains NaN or infinite"),
        ([GOOD, torch.tensor([0.1, float("inf")])], 16000, "Clip 1 contains NaN or infinite"),
        (np.zeros(1600, dtype=np.int16), 16000, "Clip 0 has dtype int16; float audio in [-1, 1]"),
        (np.zeros(1600, dtype=np.int32), 16000, "Clip 0 has dtype int32; float audio in [-1, 1]"),
        (np.zeros(1600, dtype=bool), 16000, "Clip 0 has dtype bool; float audio in [-1, 1]"),
        (np.zeros(1600, dtype=np.complex64), 16000, "Clip 0 has dtype complex64; float audio in [-1, 1]"),
        (np.array([0.1, "a"], dtype=object), 16000, "Clip 0 has dtype object; float audio in [-1, 1]"),
        (np.array(["0.1", "0.2"]), 16000, "Clip 0 has dtype <U3; float audio in [-1, 1]"),
        ([GOOD, torch.zeros(1600, dtype=torch.int16)], 16000, "Clip 1 has dtype torch.int16; float audio in [-1, 1]"),
        (torch.zeros(1600, dtype=torch.complex64), 16000, "Clip 0 has dtype torch.complex64; float audio in [-1, 1]"),
        (np.zeros((1, 2, 1600), dtype=np.float32), 16000, "Clip 0 has 3 dimensions"),
        ([0.1, 0.2], 16000, "Clip 0 has 0 dimensions"),
    ],
)
def test_bad_input_raises(
    extractor: NatureLMFeatureExtractor, raw_speech: object, sampling_rate: float | None, expected_message: str
) -> None:
    with pytest.raises(ValueError) as error:
        extractor(raw_speech, sampling_rate=sampling_rate)
    assert expected_message in str(error.value)


def test_attention_mask_marks_real_frames(extractor: NatureLMFeatureExtractor) -> None:
    rng = np.random.default_rng(0)
    short = rng.uniform(-0.5, 0.5, extractor.num_samples // 3 + 7).astype(np.float32)
    full = rng.uniform(-0.5, 0.5, extractor.num_samples).astype(np.float32)
    out = extractor([short, full], sampling_rate=extractor.sampling_rate, return_attention_mask=True)
    silence = extractor(np.zeros(1, dtype=np.float32), sampling_rate=extractor.sampling_rate).input_features[0]

    mask = out["attention_mask"]
    assert mask.shape == out["input_features"].shape[:2] and mask.dtype == np.int64
    # a frame holds real audio exactly when its features differ from those of silence
    has_audio = (out["input_features"] != silence).any(axis=-1)
    np.testing.assert_array_equal(mask, has_audio.astype(np.int64))
    assert mask[0].sum() == math.ceil(len(short) / extractor.window_shift)
    assert mask[1].all()
    assert "attention_mask" not in extractor(short, sampling_rate=extractor.sampling_rate)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    settings = dict(
        num_mel_bins=64, sampling_rate=8000, frame_length=32.0, frame_shift=16.0, max_length_seconds=3.0,
        mean=1.5, std=2.5, return_attention_mask=True,
    )  # fmt: skip
    original = NatureLMFeatureExtractor(**settings)
    original.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert {key: saved[key] for key in settings} == settings
    assert "window" not in saved and "mel_filters" not in saved

    loaded = NatureLMFeatureExtractor.from_pretrained(tmp_path)
    assert loaded.to_dict() == original.to_dict()
    clip = np.random.default_rng(0).uniform(-0.5, 0.5, 12345).astype(np.float32)
    expected, result = original(clip, sampling_rate=22050), loaded(clip, sampling_rate=22050)
    assert result.keys() == expected.keys() == {"input_features", "attention_mask"}
    assert result["input_features"].shape == (1, loaded.num_frames, 64)
    for key in expected:
        np.testing.assert_array_equal(result[key], expected[key])


def test_num_audio_tokens_matches_reference(
    extractor: NatureLMFeatureExtractor, reference: dict[str, torch.Tensor], parity_dir: Path
) -> None:
    config = json.loads((parity_dir / "original_checkpoint_full" / "config.json").read_text())
    window_tokens = round(1500 * config["second_per_window"] / 30)  # the original's kernel size in BEATs tokens
    stride_tokens = round(1500 * config["second_stride"] / 30)
    patch_size = config["beats_cfg"]["input_patch_size"]

    frames = extractor(list(reference["waveform"]), sampling_rate=16000).input_features.shape[1]
    assert extractor.num_frames == frames == reference["fbank"].shape[1]
    assert (frames // patch_size) * (extractor.num_mel_bins // patch_size) == reference["beats_features"].shape[1]
    num_tokens = extractor.get_num_audio_tokens(
        window_tokens, stride_tokens, config["num_audio_query_token"], patch_size
    )
    assert num_tokens == reference["audio_embeds"].shape[1]


@pytest.mark.parametrize("max_length_seconds", [1.0, 2.5, 10.0, 30.0])
def test_num_audio_tokens_arithmetic(max_length_seconds: float) -> None:
    extractor = NatureLMFeatureExtractor(max_length_seconds=max_length_seconds)
    frames, mel_bins = extractor(GOOD, sampling_rate=16000).input_features.shape[1:]
    assert frames == extractor.num_frames
    patches = (frames // 16) * (mel_bins // 16)
    for window_tokens, stride_tokens, num_query_tokens in [(17, 17, 1), (17, 17, 4), (5, 5, 2), (25, 12, 2)]:
        windows = len(range(0, patches - window_tokens + 1, stride_tokens))
        expected = windows * num_query_tokens
        assert extractor.get_num_audio_tokens(window_tokens, stride_tokens, num_query_tokens) == expected
    with pytest.raises(ValueError, match="must be positive"):
        extractor.get_num_audio_tokens(0, 1, 1)


def test_loads_as_remote_code_without_audio_libraries(tmp_path: Path) -> None:
    """The file is copied into checkpoints and loaded with `trust_remote_code` where only torch, numpy and
    transformers are installed."""
    source = Path(module.__file__)
    tree = ast.parse(source.read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    third_party = {name.split(".")[0] for name in imported} - set(sys.stdlib_module_names)
    siblings = {path.stem for path in source.parent.glob("*_naturelm.py")}
    assert third_party - siblings <= {"torch", "numpy", "transformers"}, third_party

    folder = tmp_path / "checkpoint"
    NatureLMFeatureExtractor().save_pretrained(folder)
    shutil.copy(source, folder)
    shutil.copy(source.parent / "audio_naturelm.py", folder)  # its sibling: mono and resampling
    config = json.loads((folder / "preprocessor_config.json").read_text())
    config["auto_map"] = {"AutoFeatureExtractor": f"{source.stem}.NatureLMFeatureExtractor"}
    (folder / "preprocessor_config.json").write_text(json.dumps(config))
    script = textwrap.dedent(
        """
        import importlib.abc, sys

        # soxr stays: resampling imports it where it is used (a 22.05 kHz clip below)
        BLOCKED = {"torchaudio", "scipy", "librosa", "soundfile", "resampy", "naturelm", "audio_naturelm",
                   "feature_extraction_naturelm"}

        class HideBlocked(importlib.abc.MetaPathFinder):  # blocked packages look not installed, to transformers too
            def __init__(self, finders):
                self.finders = finders

            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    return None
                for finder in self.finders:
                    spec = finder.find_spec(name, path, target)
                    if spec is not None:
                        return spec
                return None

            def find_distributions(self, *args, **kwargs):
                for finder in self.finders:
                    yield from getattr(finder, "find_distributions", lambda *args, **kwargs: ())(*args, **kwargs)

        sys.meta_path[:] = [HideBlocked(list(sys.meta_path))]
        import numpy as np
        from transformers import AutoFeatureExtractor

        extractor = AutoFeatureExtractor.from_pretrained(sys.argv[1], trust_remote_code=True)
        features = extractor(np.zeros(22050, dtype=np.float32), sampling_rate=22050).input_features
        print(type(extractor).__name__, features.shape)
        """
    )
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script, str(folder)], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    expected_shape = (1, NatureLMFeatureExtractor().num_frames, NatureLMFeatureExtractor().num_mel_bins)
    assert f"NatureLMFeatureExtractor {expected_shape}" in result.stdout
