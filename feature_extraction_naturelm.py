# Copyright 2026 The NatureLM-audio HF authors. Licensed under the MIT License.
"""
Feature extractor for NatureLM-audio: the BEATs Kaldi log-mel front end.

This file is shipped with checkpoints as remote code (`trust_remote_code=True`), so it imports only torch, numpy,
transformers, the standard library and its sibling `audio_naturelm` (resampling).
"""

import math
import warnings

import numpy as np
import torch

from transformers.audio_utils import mel_filter_bank
from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature
from transformers.utils import TensorType, logging

try:  # as remote code these files form one package; pip-installed they are top-level modules
    from .audio_naturelm import to_mono
except ImportError:
    from audio_naturelm import to_mono


logger = logging.get_logger(__name__)

# Kaldi fbank settings that BEATs uses implicitly (the defaults of `torchaudio.compliance.kaldi.fbank`).
KALDI_PCM_SCALE = 2**15  # BEATs feeds Kaldi 16-bit-PCM-scaled audio
KALDI_PREEMPHASIS = 0.97
KALDI_LOW_FREQUENCY = 20.0
KALDI_LOG_FLOOR = torch.finfo(torch.float32).eps

_TENSOR_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_ARRAY_DTYPES = (np.float16, np.float32, np.float64)


class NatureLMFeatureExtractor(SequenceFeatureExtractor):
    r"""
    Constructs a NatureLM-audio feature extractor.

    It reproduces the audio front end of the original NatureLM-audio: each clip becomes 16 kHz mono audio of exactly
    `max_length_seconds` (truncated or zero-padded, then clipped to [-1, 1]) and then BEATs' normalised Kaldi log-mel
    filter bank (`torchaudio.compliance.kaldi.fbank` with its defaults: Povey window, pre-emphasis 0.97, DC removal,
    no dither, snip edges, 512-point FFT, power spectrum, 20 Hz to Nyquist), computed here in batched torch without
    torchaudio.

    Args:
        num_mel_bins (`int`, *optional*, defaults to 128):
            Number of mel filters, i.e. the feature dimension.
        sampling_rate (`int`, *optional*, defaults to 16000):
            Sampling rate the model expects; input audio is resampled to it.
        frame_length (`float`, *optional*, defaults to 25.0):
            Analysis frame length in milliseconds.
        frame_shift (`float`, *optional*, defaults to 10.0):
            Hop between frames in milliseconds.
        max_length_seconds (`float`, *optional*, defaults to 10.0):
            Every clip is truncated or zero-padded to this duration, as the model was trained on fixed-length clips.
        mean (`float`, *optional*, defaults to 15.41663):
            Mean of the log-mel features used by BEATs for normalisation.
        std (`float`, *optional*, defaults to 6.55582):
            Standard deviation used by BEATs for normalisation (features are divided by `2 * std`).
        padding_value (`float`, *optional*, defaults to 0.0):
            Sample value used to pad short clips (silence).
        return_attention_mask (`bool`, *optional*, defaults to `False`):
            Whether [`~NatureLMFeatureExtractor.__call__`] returns an `attention_mask` over frames by default. The
            original model does not use one: it always sees the padded clip.
    """

    model_input_names = ["input_features"]

    def __init__(
        self,
        num_mel_bins: int = 128,
        sampling_rate: int = 16000,
        frame_length: float = 25.0,
        frame_shift: float = 10.0,
        max_length_seconds: float = 10.0,
        mean: float = 15.41663,
        std: float = 6.55582,
        padding_value: float = 0.0,
        return_attention_mask: bool = False,
        **kwargs,
    ) -> None:
        kwargs.pop("feature_size", None)  # saved by `to_dict`, always equal to `num_mel_bins`
        super().__init__(
            feature_size=num_mel_bins,
            sampling_rate=sampling_rate,
            padding_value=padding_value,
            return_attention_mask=return_attention_mask,
            **kwargs,
        )
        self.num_mel_bins = num_mel_bins
        self.frame_length = frame_length
        self.frame_shift = frame_shift
        self.max_length_seconds = max_length_seconds
        self.mean = mean
        self.std = std
        if self.num_frames < 1:
            raise ValueError(
                f"max_length_seconds={max_length_seconds} is shorter than one {frame_length} ms frame."
            )

        # `to_dict` leaves out the attributes named `window` and `mel_filters`, so they stay out of the JSON config.
        # The Povey window is built in fp32 like Kaldi/torchaudio: its last-bit rounding visibly moves the log energy
        # of near-silent bins, so a float64 window cast to fp32 would not reproduce the original features.
        self.window = torch.hann_window(self.window_size, periodic=False, dtype=torch.float32).pow(0.85)
        with warnings.catch_warnings():  # Kaldi's bank has empty low filters at this FFT size; the original does too
            warnings.filterwarnings("ignore", message="At least one mel filter has all zero values")
            mel_filters = mel_filter_bank(
                num_frequency_bins=self.n_fft // 2 + 1,
                num_mel_filters=num_mel_bins,
                min_frequency=KALDI_LOW_FREQUENCY,
                max_frequency=sampling_rate / 2,
                sampling_rate=sampling_rate,
                norm=None,
                mel_scale="kaldi",
                triangularize_in_mel_space=True,
            )
        self.mel_filters = torch.from_numpy(mel_filters).float()

    # Kaldi rounds the frame sizes down to whole samples and the FFT size up to a power of two.
    @property
    def window_size(self) -> int:
        """Frame length in samples."""
        return int(self.sampling_rate * self.frame_length * 0.001)

    @property
    def window_shift(self) -> int:
        """Frame shift in samples."""
        return int(self.sampling_rate * self.frame_shift * 0.001)

    @property
    def n_fft(self) -> int:
        """FFT size: the frame length rounded up to a power of two."""
        return 1 << (self.window_size - 1).bit_length()

    @property
    def num_samples(self) -> int:
        """Number of samples of every (truncated or padded) clip."""
        return round(self.max_length_seconds * self.sampling_rate)

    @property
    def num_frames(self) -> int:
        """Number of fbank frames per clip (Kaldi `snip_edges`: only frames that fit entirely)."""
        return 1 + (self.num_samples - self.window_size) // self.window_shift

    def get_num_audio_tokens(
        self, window_tokens: int, window_stride_tokens: int, num_query_tokens: int, patch_size: int = 16
    ) -> int:
        """
        Number of LLM input vectors the model makes from one clip: BEATs cuts the `(num_frames, num_mel_bins)` fbank
        into non-overlapping `patch_size` x `patch_size` patches, the Q-Former reads them in windows of
        `window_tokens` patches every `window_stride_tokens` (a trailing partial window is dropped) and emits
        `num_query_tokens` per window.

        Args:
            window_tokens (`int`): BEATs patches per Q-Former window (17 for the released model).
            window_stride_tokens (`int`): patches between window starts (17 for the released model).
            num_query_tokens (`int`): LLM audio tokens per window (1 for the released model).
            patch_size (`int`, *optional*, defaults to 16): BEATs patch size in frames and mel bins.

        Returns:
            `int`: the number of audio tokens (29 for 10 s with the released model).
        """
        if min(window_tokens, window_stride_tokens, num_query_tokens, patch_size) <= 0:
            raise ValueError(
                f"window_tokens ({window_tokens}), window_stride_tokens ({window_stride_tokens}), num_query_tokens "
                f"({num_query_tokens}) and patch_size ({patch_size}) must be positive."
            )
        num_patches = (self.num_frames // patch_size) * (self.num_mel_bins // patch_size)
        num_windows = (num_patches - window_tokens) // window_stride_tokens + 1 if num_patches >= window_tokens else 0
        return num_windows * num_query_tokens

    def _prepare_clip(
        self, clip: np.ndarray | torch.Tensor, index: int, sampling_rate: int
    ) -> tuple[torch.Tensor, int]:
        """Validates one clip and returns it as fixed-length 16 kHz mono float32 with its number of real samples."""
        is_tensor = isinstance(clip, torch.Tensor)
        clip = clip if is_tensor else np.asarray(clip)
        if clip.dtype not in (_TENSOR_DTYPES if is_tensor else _ARRAY_DTYPES):
            raise ValueError(
                f"Clip {index} has dtype {clip.dtype}; float audio in [-1, 1] is expected (float16, float32, float64 "
                "or a bfloat16 tensor). Convert integer PCM by dividing by its full scale, e.g. 32768 for int16."
            )
        if clip.ndim not in (1, 2):
            raise ValueError(
                f"Clip {index} has {clip.ndim} dimensions (shape {tuple(clip.shape)}); expected 1-D (time,) or 2-D "
                "(channels, time) / (time, channels). Pass a batch as a list of clips."
            )
        if math.prod(clip.shape) == 0:
            raise ValueError(f"Clip {index} is empty (shape {tuple(clip.shape)}).")
        samples = clip.detach().float().cpu().numpy() if is_tensor else clip.astype(np.float32)
        if not np.isfinite(samples).all():
            raise ValueError(f"Clip {index} contains NaN or infinite samples.")
        # mixed to mono (the shorter axis is the channels) and resampled by the package's one audio path
        waveform = torch.from_numpy(to_mono(samples, sampling_rate, self.sampling_rate)[: self.num_samples])
        num_real = waveform.shape[0]
        waveform = torch.nn.functional.pad(waveform, (0, self.num_samples - num_real), value=self.padding_value)
        return waveform.clamp(-1.0, 1.0), num_real

    def _kaldi_fbank(self, waveforms: torch.Tensor) -> torch.Tensor:
        """
        `torchaudio.compliance.kaldi.fbank` with BEATs' settings for a batch `(batch, samples)`, in the same fp32
        operation order so that it matches to rounding error. Returns `(batch, num_frames, num_mel_bins)`.
        """
        frames = (waveforms * KALDI_PCM_SCALE).unfold(-1, self.window_size, self.window_shift)
        # Frames are written straight into the zero-padded FFT input, saving three full-size temporaries.
        padded = frames.new_zeros(*frames.shape[:-1], self.n_fft)
        frames = torch.sub(frames, frames.mean(dim=-1, keepdim=True), out=padded[..., : self.window_size])
        previous = KALDI_PREEMPHASIS * frames[..., :-1]
        frames[..., :1].sub_(KALDI_PREEMPHASIS * frames[..., :1])  # Kaldi repeats the first sample
        frames[..., 1:].sub_(previous)
        frames.mul_(self.window)
        spectrum = torch.fft.rfft(padded)
        # re^2 + im^2 rather than torchaudio's abs().pow(2): the same to rounding, without a slow complex hypot
        power = spectrum.real.square() + spectrum.imag.square()
        return torch.matmul(power, self.mel_filters).clamp_min(KALDI_LOG_FLOOR).log()

    def __call__(
        self,
        raw_speech: np.ndarray | torch.Tensor | list[np.ndarray] | list[torch.Tensor],
        sampling_rate: int | None = None,
        return_tensors: str | TensorType | None = None,
        return_attention_mask: bool | None = None,
        **kwargs,
    ) -> BatchFeature:
        """
        Turns one clip or a list of clips into normalised BEATs log-mel features.

        Args:
            raw_speech (`np.ndarray`, `torch.Tensor` or a list of them):
                Float audio in [-1, 1]. A 1-D clip is mono `(time,)`. A 2-D clip is multi-channel and averaged to
                mono; its shorter axis is taken to be the channels, i.e. it is `(channels, time)` if
                `shape[0] <= shape[1]` and `(time, channels)` otherwise. A batch must be a list (or tuple) of clips,
                which may differ in length and channel layout but share `sampling_rate`.
            sampling_rate (`int`):
                Sampling rate of `raw_speech`; required so that audio is never silently read at the wrong rate. Clips
                at other rates than `self.sampling_rate` are resampled (soxr, as `audio_naturelm` reads files).
            return_tensors (`str` or [`~utils.TensorType`], *optional*):
                `"pt"` for torch tensors, `"np"` or `None` for numpy arrays.
            return_attention_mask (`bool`, *optional*):
                Whether to return `attention_mask` of shape `(batch, num_frames)`: 1 on frames that contain at least
                one sample of real (non-padding) audio. Defaults to `self.return_attention_mask`.

        Returns:
            [`BatchFeature`]: `input_features` (float32, `(batch, num_frames, num_mel_bins)`) and optionally
            `attention_mask` (int64, `(batch, num_frames)`).
        """
        if kwargs:
            logger.warning_once(
                f"{self.__class__.__name__} ignores {sorted(kwargs)}: every clip is cut or padded to "
                f"max_length_seconds={self.max_length_seconds}."
            )
        if sampling_rate is None or sampling_rate <= 0 or sampling_rate != int(sampling_rate):
            raise ValueError(
                f"`sampling_rate` must be the positive integer sampling rate of `raw_speech` in Hz, got "
                f"{sampling_rate}."
            )
        clips = list(raw_speech) if isinstance(raw_speech, (list, tuple)) else [raw_speech]
        if not clips:
            raise ValueError("`raw_speech` is an empty list; pass at least one audio clip.")

        prepared = [self._prepare_clip(clip, index, int(sampling_rate)) for index, clip in enumerate(clips)]
        waveforms = torch.stack([waveform for waveform, _ in prepared])
        features = (self._kaldi_fbank(waveforms) - self.mean) / (2 * self.std)
        data = {"input_features": features.numpy()}

        if return_attention_mask if return_attention_mask is not None else self.return_attention_mask:
            frame_starts = np.arange(self.num_frames) * self.window_shift
            num_real = np.array([n for _, n in prepared])
            data["attention_mask"] = (frame_starts[None, :] < num_real[:, None]).astype(np.int64)

        return BatchFeature(data, tensor_type=return_tensors)


# Saved with its code file and an `auto_map`, so a saved folder loads with the Auto classes and `trust_remote_code`
# wherever it goes (transformers registers remote classes so when it loads them; this covers the installed modules).
NatureLMFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")

__all__ = ["NatureLMFeatureExtractor"]
