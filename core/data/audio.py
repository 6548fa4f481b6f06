"""WAV audio: read as float32 mono in [-1, 1], resample, write 16-bit PCM.

Example
-------
>>> audio, rate = read_wav("stimuli/souls.wav")  # doctest: +SKIP
>>> audio_16k = resample(audio, rate, 16000)  # doctest: +SKIP
"""

from __future__ import annotations

from math import gcd
from pathlib import Path

import numpy as np
from scipy.io import wavfile
from scipy.signal import resample_poly

from core.errors import DataError

SAMPLE_RATE = 16000  # Hz; what WavLM expects, and so what the dataset hands out


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a PCM (8/16/24/32-bit integer) or float WAV file as mono float32.

    Parameters
    ----------
    path : str or Path
        The ``.wav`` file.

    Returns
    -------
    audio : array of shape (n_samples,), float32
        Channels averaged; integer PCM scaled so that full scale is [-1, 1].
    sample_rate : int
        The file's native rate in Hz.

    Raises
    ------
    DataError
        The file is missing or is not a WAV file scipy can read.
    """
    sample_rate, samples = _open(path)
    audio = _to_float(samples)
    if audio.ndim == 2:
        audio = audio.mean(axis=1, dtype=np.float32)
    return audio, sample_rate


def wav_duration(path: str | Path) -> float:
    """Length of a WAV file in seconds, from its header (the samples are memory-mapped,
    not decoded, except for 24-bit files, which scipy cannot map)."""
    sample_rate, samples = _open(path)
    return samples.shape[0] / sample_rate


def wav_rate(path: str | Path) -> int:
    """A WAV file's sample rate in Hz, from its header."""
    return int(_open(path)[0])


def low_rate_warning(path: str | Path, sample_rate: int) -> str | None:
    """A warning when audio comes at less than ``SAMPLE_RATE``, else None.

    Resampled up to 16 kHz, such audio lacks everything above half its own rate (4 kHz for
    8 kHz audio), which WavLM and Whisper saw in pretraining: their features shift.
    """
    if sample_rate >= SAMPLE_RATE:
        return None
    return (f"{path}: audio at {sample_rate} Hz, below the models' {SAMPLE_RATE} Hz: upsampled, it has nothing "
            f"above {sample_rate / 2000:g} kHz, which the pretrained models expect; use the original recording if you have it")


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Polyphase resampling with the rate ratio reduced by its gcd.

    Parameters
    ----------
    audio : array of shape (n_samples,)
    from_rate, to_rate : int
        Sample rates in Hz.

    Returns
    -------
    resampled : array of shape (ceil(n_samples * to_rate / from_rate),), float32
        ``audio`` itself (as float32) when the rates are equal.
    """
    if from_rate == to_rate:
        return audio.astype(np.float32, copy=False)
    common = gcd(int(from_rate), int(to_rate))
    up, down = int(to_rate) // common, int(from_rate) // common
    return resample_poly(audio, up, down).astype(np.float32)


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write float audio in [-1, 1] as 16-bit PCM (values outside are clipped).

    Parameters
    ----------
    path : str or Path
        Output file; parent folders are created.
    audio : array of shape (n_samples,) or (n_samples, n_channels)
    sample_rate : int, default SAMPLE_RATE
        In Hz.
    """
    pcm = np.round(np.clip(audio, -1.0, 1.0) * np.iinfo(np.int16).max).astype(np.int16)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wavfile.write(path, int(sample_rate), pcm)


def _open(path: str | Path) -> tuple[int, np.ndarray]:
    """The file's rate and samples, memory-mapped where the sample size allows."""
    try:
        try:
            return wavfile.read(path, mmap=True)
        except ValueError as e:
            if "mmap" not in str(e):
                raise
            return wavfile.read(path, mmap=False)
    except FileNotFoundError:
        raise DataError(f"{path}: audio file not found") from None
    except (OSError, ValueError, EOFError) as e:
        message = " ".join(str(e).split())
        raise DataError(f"{path}: not a readable WAV file ({message})") from None


def _to_float(samples: np.ndarray) -> np.ndarray:
    """A float32 copy in memory (not tied to the mapped file), integer PCM scaled to [-1, 1].

    8-bit WAV is unsigned with its zero at 128; scipy returns 24-bit data left-aligned in
    int32, so one scale per container type fits every bit depth.
    """
    if samples.dtype == np.uint8:
        return (samples.astype(np.float32) - 128.0) / 128.0
    if np.issubdtype(samples.dtype, np.integer):
        return samples.astype(np.float32) / np.float32(-np.iinfo(samples.dtype).min)
    return np.array(samples, dtype=np.float32)
