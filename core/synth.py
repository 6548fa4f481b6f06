"""The planted-teacher dataset: ds003020's layout with a known right answer.

``python -m core.synth --out DIR [--size tiny|demo] [--seed N]`` writes

- ``DIR/pretrained/``: a small WavLM-architecture model (``save_pretrained``), the
  student's starting point. Its encoder's linear weights are re-drawn at
  std ``1/sqrt(fan_in)``: with transformers' default init (std 0.02) every layer is nearly
  the identity and all layers look alike (BRIEF section 4).
- ``DIR/stimuli/<story>.wav``: speech-like sound made in numpy (voiced syllables with a
  pitch contour and formants, noise-burst consonants, pauses between words).
- ``DIR/derivative/TextGrids/<story>.TextGrid``: the word and phone timings of that sound.
- ``DIR/derivative/preprocessed_data/<SUBJECT>/<story>.hf5``: responses, trimmed as in
  ds003020 (10 TRs off the start, 5 off the end), NaN voxels included; the test story holds
  ``individual_repeats`` and ``data`` is their mean.
- ``DIR/derivative/rois/<SUBJECT>.hf5``: ROI masks ``AC``, ``left``, ``right`` and
  ``planted`` (the "high" voxels below, driven by the layer the planted change reaches), so
  every run reports its r there like on any ROI.
- ``DIR/derivative/respdict.json``: untrimmed TR counts.
- ``DIR/truth/``: what a method should recover (``truth.json``: planted layers, rank,
  scale, noise levels; ``<SUBJECT>.hf5``: voxel groups, noise sd, the noiseless test
  responses and the exact noise ceiling; ``teacher/``: the teacher model).

Real networks and real speech (``SynthSpec.pretrained``, ``SynthSpec.speech``; ``--pretrained``,
``--speech``): the "pretrained" model may instead be any checkpoint folder of a supported
family (:data:`core.wavlm.FAMILIES`; e.g. the real Whisper tiny.en from
:mod:`core.whisper_ct2`), copied to ``DIR/pretrained``, and the sound may be real speech:
clips (16-kHz wav files of a folder) joined in a seeded random order with 0.2-0.8 s
pauses. Where every clip has a ``.TextGrid`` of the same name beside it (``word`` and
``phone`` tiers, as :mod:`core.tts` writes for text spoken by Festival), the stories get
TextGrids too, on the story's clock, and the word-level probes run; clips without word
times give no TextGrids.

How responses are made: the *teacher* is the pretrained model with a planted rank-``r``
change ``scale * U V^T`` added to the q and v projections of ``planted_layers``. Teacher
window features at ``low_layer`` and ``high_layer`` become TR features by one of two
response models (``SynthSpec.response_model``, ``--response-model``), then go through a
low-rank random readout per subject:

- ``fir`` (default): the pipeline the models use (Lanczos to TRs, z-score, delays 1..4
  weighted by an HRF-like FIR, ``HRF_FIR``). A model with the right features can fit it
  exactly.
- ``hrf``: independent of that pipeline, as a real brain is. Window features are z-scored
  over the story, averaged within each TR (TR ``j`` averages the windows that end in
  ``(t_j - TR, t_j]``, ``t_j`` the row's time), then convolved with SPM's canonical
  double-gamma HRF sampled at the TR (:func:`canonical_hrf`; its undershoot reaches past
  the models' 4 delays).

Voxel groups:

- ``AC``: driven by low-layer features only (the planted change does not reach them).
- ``high``: driven by high-layer features (left hemisphere mostly high, right hemisphere
  mixes low and high): ridge on the frozen model falls short here, a correct fine-tune
  closes the gap.
- ``silent``: noise only (ceiling 0); plus a few all-NaN voxels.

Every voxel's signal has unit variance over the subject's stories; Gaussian noise of a
per-voxel sd drawn from ``noise_sd`` is added. Everything is seeded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from . import dataset as ds
from .errors import BrainsweepError, ConfigError, DataError
from .extract import all_window_features, to_trs
from .features import DELAYS, WindowSpec, zscore
from .textgrid import Interval

TEST_STORY = ds.PAPER_TEST[0]
VAL_STORIES = ds.PAPER_VAL
TRAIN_STORY_NAMES = (
    "alternateithicatom", "avatar", "howtodraw", "legacy", "life", "myfirstdaywiththeyankees",
    "naked", "odetostepfather", "souls", "undertheinfluence", "adollshouse", "buck",
    "eyespy", "hangtime", "inamoment", "itsabox", "sloth", "stagefright", "tildeath", "laws",
)
GROUPS = ("AC", "high", "silent")
HRF_FIR = (0.35, 1.0, 0.7, 0.25)  # weights of delays 1..4 TRs (the "fir" response model)
RESPONSE_MODELS = ("fir", "hrf")


@dataclass(frozen=True)
class SynthSpec:
    """Everything that determines a planted-teacher dataset."""

    seed: int = 0
    subjects: tuple[str, ...] = ("UTS01", "UTS02")
    n_voxels: int = 240
    n_train_stories: int = 6
    train_trs: int = 70
    val_trs: int = 40
    test_trs: int = 50
    n_repeats: int = 5
    # the "pretrained" model
    hidden_size: int = 64
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 128
    conv_dim: int = 32
    # the truth
    low_layer: int = 1
    high_layer: int = 3
    planted_layers: tuple[int, ...] = (3,)
    planted_rank: int = 2
    planted_scale: float = 4.0
    planted_projections: tuple[str, ...] = ("q_proj", "v_proj")
    readout_rank: int = 8
    noise_sd: tuple[float, float] = (0.3, 0.8)
    fraction_ac: float = 0.25
    fraction_silent: float = 0.15
    fraction_nan: float = 0.03
    sample_rate: int = 16000
    window: dict = field(default_factory=lambda: WindowSpec().as_dict())
    response_model: str = "fir"
    # real networks and real speech: a checkpoint folder ("" = the small random WavLM above,
    # whose sizes then apply), and a folder of 16-kHz wav clips ("" = speech-like sound)
    pretrained: str = ""
    speech: str = ""

    def __post_init__(self):
        if self.response_model not in RESPONSE_MODELS:
            raise ConfigError(f"response_model: one of {', '.join(RESPONSE_MODELS)} (got {self.response_model!r})")

    def stories(self) -> dict[str, int]:
        """Story -> number of (trimmed) response TRs."""
        if self.n_train_stories > len(TRAIN_STORY_NAMES):
            raise ValueError(f"n_train_stories: at most {len(TRAIN_STORY_NAMES)} (got {self.n_train_stories})")
        out = {name: self.train_trs for name in TRAIN_STORY_NAMES[: self.n_train_stories]}
        out.update({name: self.val_trs for name in VAL_STORIES})
        out[TEST_STORY] = self.test_trs
        return out


SIZES = {
    "tiny": SynthSpec(),
    # The default sweep's (search_spaces/demo.yaml): brain-tuning finds the change in ~3 CPU
    # minutes. 1000 training TRs with less noise, a 32-d model, 1-s windows every 1 s (the
    # sweep uses the same windows, so the truth stays exact).
    "demo": SynthSpec(
        n_train_stories=10, train_trs=100, noise_sd=(0.2, 0.5),
        hidden_size=32, num_heads=2, intermediate_size=64, conv_dim=16,
        window=WindowSpec(context=0.75, chunk=0.25, stride=1.0).as_dict(),
    ),
    # The tiny model with 20 training stories of 100 TRs (2000 TRs, about a fifth of one
    # ds003020 subject's): enough data for brain-tuning to find the planted change, which
    # 420 TRs are not (docs/planted_recovery.md).
    "recovery": SynthSpec(n_train_stories=20, train_trs=100),
}
# The demo with a third subject (search_spaces/multi_subject.yaml): tune on one or two
# subjects, then fit readouts for the held-out third one.
SIZES["multi"] = replace(SIZES["demo"], subjects=("UTS01", "UTS02", "UTS03"))


def wavlm_config(spec: SynthSpec):
    """A small WavLM config with the real CNN geometry (320-sample hop, 400-sample field)."""
    from transformers import WavLMConfig

    return WavLMConfig(
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        intermediate_size=spec.intermediate_size,
        conv_dim=(spec.conv_dim,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        feat_extract_norm="layer",
        do_stable_layer_norm=False,
    )


def make_pretrained(spec: SynthSpec):
    """The 'pretrained' model: a WavLM from config with its encoder's linear weights re-drawn."""
    from transformers import WavLMModel

    torch.manual_seed(spec.seed)
    model = WavLMModel(wavlm_config(spec))
    gen = torch.Generator().manual_seed(spec.seed + 1)
    with torch.no_grad():
        for module in list(model.encoder.modules()) + [model.feature_projection.projection]:
            if isinstance(module, torch.nn.Linear):
                fan_in = module.weight.shape[1]
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) / fan_in**0.5)
    return model.eval()


def plant(model, spec: SynthSpec):
    """The teacher: ``model`` with a rank-``r`` change added to q and v of the planted layers.

    The change is ``scale * ||W||_2 * U V^T`` with random orthonormal ``U``, ``V`` of
    ``r`` columns: each of its ``r`` singular values is ``scale`` times the weight's
    largest, so the change is large, yet within reach of a LoRA adapter of rank >= r.
    """
    import copy

    from .wavlm import layer_target_path

    teacher = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(spec.seed + 2)
    d = model.config.hidden_size
    with torch.no_grad():
        for layer in spec.planted_layers:
            block = teacher.encoder.layers[layer - 1]
            for name in spec.planted_projections:
                proj = block.get_submodule(layer_target_path(model.config, name))
                u = torch.linalg.qr(torch.randn(d, spec.planted_rank, generator=gen))[0]
                v = torch.linalg.qr(torch.randn(d, spec.planted_rank, generator=gen))[0]
                norm = torch.linalg.matrix_norm(proj.weight, ord=2)
                proj.weight.add_(spec.planted_scale * norm * u @ v.T)
    return teacher.eval()


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
    words, phones : lists of :class:`core.textgrid.Interval`
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


def subject_readout(spec: SynthSpec, d: int, subject_index: int):
    """Per-subject truth: voxel groups, hemispheres, mixing weights, readout and noise.

    Returns a dict of arrays; ``w_low`` and ``w_high`` have shape (d, n_voxels) (the
    readout of one TR's features, before the response model spreads it over time), the
    rest (n_voxels,).
    """
    rng = np.random.default_rng([spec.seed, 100 + subject_index])
    n = spec.n_voxels
    left = np.arange(n) < n // 2
    group = np.full(n, GROUPS.index("high"))
    order = rng.permutation(n)
    n_ac, n_silent = int(spec.fraction_ac * n), int(spec.fraction_silent * n)
    group[order[:n_ac]] = GROUPS.index("AC")
    group[order[n_ac : n_ac + n_silent]] = GROUPS.index("silent")
    nan = np.zeros(n, bool)
    nan[order[n_ac + n_silent : n_ac + n_silent + max(1, int(spec.fraction_nan * n))]] = True
    # Hemispheres mix differently: left high voxels are mostly high-layer, right ones mix.
    mix_low = np.select([group == 0, group == 2, left], [1.0, 0.0, 0.15], default=0.6)
    mix_high = np.select([group == 0, group == 2, left], [0.0, 0.0, 1.0], default=0.7)

    def readout():
        proj = rng.standard_normal((d, spec.readout_rank)) / np.sqrt(d)
        mixing = rng.standard_normal((spec.readout_rank, n))
        return proj @ mixing

    return {
        "group": group, "left": left, "nan": nan,
        "w_low": readout() * mix_low, "w_high": readout() * mix_high,
        "noise_sd": rng.uniform(*spec.noise_sd, n),
    }


def canonical_hrf(tr: float = ds.TR, length: float = 32.0) -> np.ndarray:
    """SPM's canonical double-gamma HRF sampled every ``tr`` seconds from 0 to ``length``.

    ``h(t) = g(t; 6) - g(t; 16) / 6`` with ``g(t; a) = t^(a-1) e^(-t) / Gamma(a)`` (peak
    near 5 s, undershoot near 15 s), scaled to sum to 1.

    Returns
    -------
    float64 array of shape (ceil(length / tr),); entry ``k`` weighs the TR ``k`` TRs back.
    """
    t = np.arange(0.0, length, tr)
    h = t**5 * np.exp(-t) / math.gamma(6) - t**15 * np.exp(-t) / math.gamma(16) / 6
    return h / h.sum()


def tr_features(spec: SynthSpec, window_features: np.ndarray, window_times: np.ndarray, n_trs: int) -> np.ndarray:
    """Window features -> the TR features that the readout of ``spec.response_model`` reads.

    Parameters
    ----------
    window_features : array of shape (n_windows, d)
    window_times : array of shape (n_windows,), window end times on the audio clock
    n_trs : number of (trimmed) response rows

    Returns
    -------
    float64 array of shape (n_trs, len(DELAYS) * d) for ``fir``, (n_trs, d) for ``hrf``
    """
    if spec.response_model == "fir":
        return to_trs(window_features, window_times, tr_times(n_trs)).astype(np.float64)
    # Row times of the whole run, untrimmed: from the scanner's first TR, before the sound starts.
    grid = np.arange(ds.TRIM_START + n_trs) * ds.TR + ds.TR / 2 - ds.SOUND_START
    rows = np.searchsorted(grid, window_times, side="left")  # the row whose TR the window ends in
    inside = rows < len(grid)
    sums = np.zeros((len(grid), window_features.shape[1]))
    np.add.at(sums, rows[inside], zscore(np.asarray(window_features, dtype=np.float64))[inside])
    counts = np.bincount(rows[inside], minlength=len(grid))[:, None]
    averaged = sums / np.maximum(counts, 1)  # a TR without windows (before the sound) reads the story mean, 0
    convolved = np.zeros_like(averaged)
    for k, h in enumerate(canonical_hrf()):
        convolved[k:] += h * averaged[: len(averaged) - k]
    return convolved[ds.TRIM_START :]


def response_weights(spec: SynthSpec, w: np.ndarray) -> np.ndarray:
    """A readout ``w`` of shape (d, n_voxels) as weights on :func:`tr_features`' columns.

    ``fir``: the delays' blocks weighted by ``HRF_FIR``, shape (len(DELAYS) * d, n_voxels);
    ``hrf``: ``w`` itself (the HRF is already in the features).
    """
    return np.concatenate([h * w for h in HRF_FIR]) if spec.response_model == "fir" else w


def generate(out: str | os.PathLike, spec: SynthSpec = SIZES["tiny"], *, force: bool = False,
             progress=print) -> Path:
    """Write a planted-teacher dataset to ``out`` (see the module docstring).

    Reuses an existing dataset made from the same spec (unless ``force``: the spec names
    the ``pretrained`` and ``speech`` folders, not what they hold); a different one is an
    error unless ``force``. The dataset is built in a temporary folder beside ``out`` and moved
    into place at the end, so an interrupted run leaves nothing half-written.
    """
    out = Path(out)
    spec_json = json.dumps(asdict(spec), sort_keys=True)
    truth_file = out / "truth" / "truth.json"
    if out.exists() and not force:
        if truth_file.exists() and json.loads(truth_file.read_text()).get("spec") == json.loads(spec_json):
            progress(f"synthetic dataset already at {out}")
            return out
        raise DataError(f"{out}: exists and is not a synthetic dataset made with these settings (use --force to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _write(tmp, spec, progress)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_checkpoint(folder: str):
    """A checkpoint folder as its family's whole transformers model (Whisper with its decoder), for :func:`plant`."""
    import transformers

    from .wavlm import FAMILIES, checkpoint_config, quiet_transformers

    model_class = getattr(transformers, FAMILIES[checkpoint_config(folder).model_type])
    with quiet_transformers():
        return model_class.from_pretrained(folder).eval()


def speech_clips(folder: str, sample_rate: int) -> list[tuple[np.ndarray, dict | None]]:
    """The wav clips of ``folder`` (sorted by name), each at ``sample_rate``, with its word and
    phone tiers where a ``.TextGrid`` of the same name lies beside it (:mod:`core.tts` writes both)."""
    from .textgrid import read_textgrid

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


def _write(root: Path, spec: SynthSpec, progress) -> None:
    from .wavlm import load_wavlm, quiet_transformers

    pretrained = load_checkpoint(spec.pretrained) if spec.pretrained else make_pretrained(spec)
    teacher = plant(pretrained, spec)
    with quiet_transformers():
        if spec.pretrained:
            shutil.copytree(spec.pretrained, root / "pretrained")
        else:
            pretrained.save_pretrained(root / "pretrained")
        teacher.save_pretrained(root / "truth" / "teacher")
    if spec.pretrained:  # the backbone our pipeline runs (of Whisper, the encoder)
        teacher = load_wavlm(str(root / "truth" / "teacher"))
    clips = speech_clips(spec.speech, spec.sample_rate) if spec.speech else None
    window = WindowSpec(**spec.window)
    stories = spec.stories()
    readouts = [subject_readout(spec, teacher.config.hidden_size, i) for i in range(len(spec.subjects))]
    for r in readouts:
        r["w_low"], r["w_high"] = response_weights(spec, r["w_low"]), response_weights(spec, r["w_high"])
    rng = np.random.default_rng([spec.seed, 7])

    signals = {s: {} for s in spec.subjects}
    for k, (story, n_trs) in enumerate(stories.items()):
        progress(f"[{k + 1}/{len(stories)}] {story}: audio and teacher features")
        if clips is None:
            audio, words, phones = speechlike_audio(story_duration(n_trs), rng, spec.sample_rate)
        else:
            audio, words, phones = joined_speech(story_duration(n_trs), clips, rng, spec.sample_rate)
        if words is not None:  # clips without word times give no TextGrids
            ds.write_textgrid(root / "derivative" / "TextGrids" / f"{story}.TextGrid",
                              {"phone": phones, "word": words}, len(audio) / spec.sample_rate)
        ds.write_wav(root / "stimuli" / f"{story}.wav", audio, spec.sample_rate)
        times, feats = all_window_features(teacher, audio, window, [spec.low_layer, spec.high_layer])
        x_low = tr_features(spec, feats[spec.low_layer], times, n_trs)
        x_high = tr_features(spec, feats[spec.high_layer], times, n_trs)
        for subject, r in zip(spec.subjects, readouts):
            signals[subject][story] = x_low @ r["w_low"] + x_high @ r["w_high"]

    ds.write_respdict(root / "derivative" / "respdict.json",
                      {story: n + ds.TRIM_START + ds.TRIM_END + ds.RESPDICT_PAD for story, n in stories.items()})
    response = ({"delays": list(DELAYS), "hrf_fir": list(HRF_FIR)} if spec.response_model == "fir"
                else {"hrf": canonical_hrf().tolist(), "tr": ds.TR})
    truth = {"spec": json.loads(json.dumps(asdict(spec))), "groups": list(GROUPS),
             "response_model": spec.response_model, **response, "test_story": TEST_STORY, "val_stories": list(VAL_STORIES),
             "model": "pretrained", "teacher": "truth/teacher",
             "notes": "noise_sd is per voxel; each voxel's signal has unit variance over all stories"}
    for i, (subject, r) in enumerate(zip(spec.subjects, readouts)):
        progress(f"responses for {subject}")
        _write_subject(root, subject, spec, r, signals[subject], np.random.default_rng([spec.seed, 200 + i]))
    (root / "truth" / "truth.json").write_text(json.dumps(truth, indent=2))


def _write_subject(root: Path, subject: str, spec: SynthSpec, r: dict, signals: dict, rng) -> None:
    import h5py

    scale = np.concatenate(list(signals.values())).std(axis=0)
    scale[scale == 0] = 1.0
    sd = np.where(r["group"] == GROUPS.index("silent"), 0.0, 1.0)
    noise_sd = r["noise_sd"]
    resp_dir = root / "derivative" / "preprocessed_data" / subject
    for story, raw in signals.items():
        signal = raw / scale * sd
        if story == TEST_STORY:
            repeats = signal[None] + noise_sd * rng.standard_normal((spec.n_repeats, *signal.shape))
            repeats[:, :, r["nan"]] = np.nan
            data = repeats.mean(axis=0)
            test_signal = signal
        else:
            data = signal + noise_sd * rng.standard_normal(signal.shape)
            data[:, r["nan"]] = np.nan
            repeats = None
        ds.write_responses(resp_dir / f"{story}.hf5", data.astype(np.float32),
                           None if repeats is None else repeats.astype(np.float32))
    ds.write_roi_masks(root / "derivative" / "rois" / f"{subject}.hf5",
                       {"AC": r["group"] == GROUPS.index("AC"), "left": r["left"], "right": ~r["left"],
                        "planted": r["group"] == GROUPS.index("high")})
    # Exact ceiling of the stored test response (the mean of the repeats).
    s = test_signal.std(axis=0)
    noise_of_mean = noise_sd / np.sqrt(spec.n_repeats)
    ceiling = np.where(s > 0, s / np.sqrt(s**2 + noise_of_mean**2), 0.0)
    ceiling[r["nan"]] = np.nan
    with h5py.File(root / "truth" / f"{subject}.hf5", "w") as f:
        f["group"] = r["group"]
        f["nan"] = r["nan"]
        f["noise_sd"] = noise_sd
        f["noise_ceiling"] = ceiling
        f["signal_test"] = test_signal.astype(np.float32)
        f["w_low"] = r["w_low"].astype(np.float32)
        f["w_high"] = r["w_high"].astype(np.float32)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.synth", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder to write the dataset to")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny",
                        help="stories, TRs, voxels and model of the dataset (SIZES in core/synth.py): tiny for "
                             "tests, demo for the demo sweep, recovery and multi for the planted-recovery studies "
                             "(default: tiny)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of everything random (sound, model, planted change, noise); same seed, same files (default: 0)")
    parser.add_argument("--response-model", choices=RESPONSE_MODELS,
                        help="how teacher features become responses (default: the size's, fir)")
    parser.add_argument("--pretrained", default="",
                        help="a checkpoint folder as the pretrained model (default: the size's small random WavLM)")
    parser.add_argument("--speech", default="", help="a folder of 16-kHz wav clips as the sound (default: speech-like)")
    parser.add_argument("--force", action="store_true", help="make it again, replacing an existing folder")
    args = parser.parse_args(argv)
    try:
        spec = replace(SIZES[args.size], seed=args.seed,
                       response_model=args.response_model or SIZES[args.size].response_model,
                       pretrained=str(Path(args.pretrained).resolve()) if args.pretrained else "",
                       speech=str(Path(args.speech).resolve()) if args.speech else "")
        path = generate(args.out, spec, force=args.force)
    except BrainsweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
