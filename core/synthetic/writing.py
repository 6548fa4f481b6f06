"""Writing the planted-teacher dataset: ds003020's layout with a known right answer.

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
family (:data:`core.backbones.FAMILIES`; e.g. the real Whisper tiny.en from
:mod:`core.backbones.whisper_ct2`), copied to ``DIR/pretrained``, and the sound may be real speech:
clips (16-kHz wav files of a folder) joined in a seeded random order with 0.2-0.8 s
pauses. Where every clip has a ``.TextGrid`` of the same name beside it (``word`` and
``phone`` tiers, as :mod:`core.synthetic.tts` writes for text spoken by Festival), the stories get
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
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from core.data import dataset as ds
from core.encoding.extract import all_window_features
from core.encoding.features import DELAYS, WindowSpec
from core.errors import BrainsweepError, DataError
from core.synthetic.responses import canonical_hrf, response_weights, subject_readout, tr_features
from core.synthetic.sound import joined_speech, speech_clips, speechlike_audio, story_duration
from core.synthetic.spec import GROUPS, HRF_FIR, RESPONSE_MODELS, SIZES, SynthSpec, TEST_STORY, VAL_STORIES
from core.synthetic.teacher import load_checkpoint, make_pretrained, plant


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


def _write(root: Path, spec: SynthSpec, progress) -> None:
    from core.backbones import load_backbone, quiet_transformers

    pretrained = load_checkpoint(spec.pretrained) if spec.pretrained else make_pretrained(spec)
    teacher = plant(pretrained, spec)
    with quiet_transformers():
        if spec.pretrained:
            shutil.copytree(spec.pretrained, root / "pretrained")
        else:
            pretrained.save_pretrained(root / "pretrained")
        teacher.save_pretrained(root / "truth" / "teacher")
    if spec.pretrained:  # the backbone our pipeline runs (of Whisper, the encoder)
        teacher = load_backbone(str(root / "truth" / "teacher"))
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
                        help="stories, TRs, voxels and model of the dataset (SIZES in core/synthetic/spec.py): tiny for "
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
