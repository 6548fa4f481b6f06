"""The stories' sound: speech-like audio made in numpy, or real speech clips joined, with word and phone times."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.data import dataset as ds
from core.data.textgrid import Interval
from core.errors import DataError


# Formants (Hz) of a few vowels, and centre frequencies of noise consonants.
VOWELS = {"AA": (730, 1090, 2440), "IY": (270, 2290, 3010), "UW": (300, 870, 2240), "EH": (530, 1840, 2480),
          "AE": (660, 1720, 2410), "AO": (570, 840, 2410), "ER": (490, 1350, 1690), "OW": (450, 1000, 2300)}


CONSONANTS = {"S": 5500.0, "SH": 3000.0, "F": 6500.0, "T": 4000.0, "K": 2200.0, "P": 1200.0, "TH": 7000.0}


SYLLABLES = [c + v for c in CONSONANTS for v in VOWELS]


def speechlike_audio(duration: float, rng: np.random.Generator, sample_rate: int = 16000):
    """Speech-like sound: words of 1-3 syllables (noise consonant + voiced vowel), pauses.

    Returns
    -------
    audio : float32 array of shape (round(duration * sample_rate),), peak about 0.5
    words, phones : lists of :class:`core.data.textgrid.Interval`
    """
    n = int(round(duration * sample_rate))
    audio = np.zeros(n, dtype=np.float64)
    words, phones = [], []
    f0_base = rng.uniform(100, 200)
    t = rng.uniform(0.2, 0.8)
    while True:
        n_syll = int(rng.integers(1, 4))
        syllables = [SYLLABLES[i] for i in rng.integers(0, len(SYLLABLES), n_syll)]
        word_start = t
        for syl in syllables:
            cons = next(c for c in sorted(CONSONANTS, key=len, reverse=True) if syl.startswith(c))
            vowel = syl[len(cons):]
            c_len, v_len = rng.uniform(0.04, 0.1), rng.uniform(0.1, 0.25)
            if t + c_len + v_len > duration - 0.05:
                break
            c_end = t + c_len
            v_end = c_end + v_len
            _add_noise_burst(audio, t, c_len, CONSONANTS[cons], rng, sample_rate)
            phones.append(Interval(t, c_end, cons))
            _add_vowel(audio, c_end, v_len, VOWELS[vowel], f0_base * rng.uniform(0.8, 1.25), rng, sample_rate)
            phones.append(Interval(c_end, v_end, vowel))
            t = v_end
        if t > word_start:
            words.append(Interval(word_start, t, "".join(syllables).lower()))
        t += rng.uniform(0.03, 0.15) if rng.random() > 0.15 else rng.uniform(0.3, 0.9)
        if t > duration - 0.4:
            break
    audio *= 0.5 / max(np.abs(audio).max(), 1e-9)
    return audio.astype(np.float32), words, phones


def _envelope(n: int) -> np.ndarray:
    ramp = max(1, n // 5)
    env = np.ones(n)
    env[:ramp] = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, ramp))
    env[-ramp:] = env[:ramp][::-1]
    return env


def _add_noise_burst(audio, start, length, centre, rng, sr):
    i, n = int(start * sr), int(length * sr)
    noise = rng.standard_normal(n)
    spectrum = np.fft.rfft(noise)
    freqs = np.fft.rfftfreq(n, 1 / sr)
    spectrum *= np.exp(-0.5 * ((freqs - centre) / (0.25 * centre)) ** 2)
    burst = np.fft.irfft(spectrum, n)
    audio[i : i + n] += 0.3 * burst / max(np.abs(burst).max(), 1e-9) * _envelope(n)


def _add_vowel(audio, start, length, formants, f0, rng, sr):
    i, n = int(start * sr), int(length * sr)
    tt = np.arange(n) / sr
    contour = f0 * (1 + rng.uniform(-0.15, 0.15) * tt / max(length, 1e-3))  # rising or falling pitch
    phase = (2 * np.pi * np.cumsum(contour) / sr).astype(np.float32)  # float32: sin is most of the time
    harmonics = np.arange(1, int(4000 // f0) + 1)
    amps = sum(np.exp(-0.5 * ((harmonics * f0 - f) / 90.0) ** 2) / (1 + k) for k, f in enumerate(formants))
    keep = amps > 1e-4 * amps.max()  # harmonics far from every formant are inaudible; skipping them is most of the speed
    wave = amps[keep].astype(np.float32) @ np.sin(harmonics[keep, None].astype(np.float32) * phase[None, :])
    audio[i : i + n] += wave / max(np.abs(wave).max(), 1e-9) * _envelope(n)


def story_duration(n_trs: int, tr: float = ds.TR) -> float:
    """Audio length for a story with ``n_trs`` trimmed rows: it ends 6 s after the last row's time."""
    last_row = (n_trs - 1 + ds.TRIM_START) * tr + tr / 2 - ds.SOUND_START
    return last_row + 6.0


def tr_times(n_trs: int, tr: float = ds.TR) -> np.ndarray:
    """Times of the trimmed rows on the audio clock, as :meth:`Dataset.tr_times` gives them."""
    return (np.arange(n_trs) + ds.TRIM_START) * tr + tr / 2 - ds.SOUND_START


def speech_clips(folder: str, sample_rate: int) -> list[tuple[np.ndarray, dict | None]]:
    """The wav clips of ``folder`` (sorted by name), each at ``sample_rate``, with its word and
    phone tiers where a ``.TextGrid`` of the same name lies beside it (:mod:`core.synthetic.tts` writes both)."""
    from core.data.textgrid import read_textgrid

    clips = []
    for path in sorted(Path(folder).glob("*.wav")):
        audio, rate = ds.read_wav(path)
        if rate != sample_rate:
            raise DataError(f"{path}: {rate} Hz; the speech clips must be {sample_rate} Hz")
        grid = path.with_suffix(".TextGrid")
        tiers = read_textgrid(grid) if grid.exists() else None
        if tiers is not None and not {"word", "phone"} <= set(tiers):
            raise DataError(f"{grid}: needs tiers 'word' and 'phone' (has {', '.join(tiers)})")
        clips.append((audio.astype(np.float32), tiers))
    if not clips:
        raise DataError(f"{folder}: no .wav clips")
    return clips


def joined_speech(duration: float, clips: list[tuple[np.ndarray, dict | None]], rng: np.random.Generator,
                  sample_rate: int = 16000):
    """``duration`` seconds of the clips in a random order (each used again only after all others), paused 0.2-0.8 s.

    Returns (audio, words, phones): the clips' labelled intervals moved to the story's clock
    (those that end after it dropped), or None and None when a clip has no TextGrid.
    """
    n = int(round(duration * sample_rate))
    parts, total, order = [], 0, []
    timed = all(tiers is not None for _, tiers in clips)
    words, phones = [], []
    while total < n:
        if not order:
            order = list(rng.permutation(len(clips)))
        audio, tiers = clips[order.pop()]
        if timed:
            offset = total / sample_rate
            for tier, out in (("word", words), ("phone", phones)):
                out += [Interval(offset + i.start, offset + i.end, i.label) for i in tiers[tier]
                        if i.label and (offset + i.end) * sample_rate <= n]
        pause = np.zeros(int(rng.uniform(0.2, 0.8) * sample_rate), np.float32)
        parts += [audio, pause]
        total += len(audio) + len(pause)
    return (np.concatenate(parts)[:n], *((words, phones) if timed else (None, None)))
