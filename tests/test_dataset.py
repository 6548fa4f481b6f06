"""The ds003020 data layer on small datasets written with its own writers."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from core.data.audio import read_wav, resample, wav_duration
import core.data.dataset as dataset_module
from core.data.dataset import (
    PAPER_TEST,
    PAPER_VAL,
    SAMPLE_RATE,
    TR,
    Dataset,
    Interval,
    Split,
    write_respdict,
    write_responses,
    write_roi_masks,
    write_textgrid,
    write_wav,
)
from core.data.textgrid import read_textgrid
from core.errors import DataError

# Paths relative to the dataset root.
PRE = Path("derivative") / "preprocessed_data"
ALPHA_HF5 = PRE / "UTS01" / "alpha.hf5"
ALPHA_WAV = Path("stimuli") / "alpha.wav"
ALPHA_TEXTGRID = Path("derivative") / "TextGrids" / "alpha.TextGrid"
RESPDICT = Path("derivative") / "respdict.json"
ROIS = Path("derivative") / "rois" / "UTS01.hf5"

N_VOXELS = 50
N_TRS = {
    "alpha": 20,
    "beta": 24,
    "fromboyhoodtofatherhood": 22,
    "onapproachtopluto": 21,
    "wheretheressmoke": 25,
}
SUBJECT_STORIES = {
    "UTS01": ("alpha", *PAPER_VAL, *PAPER_TEST),
    "UTS02": ("alpha", "beta", *PAPER_TEST),  # lacks the paper's validation stories
}
STEREO_STORY, STEREO_RATE = "beta", 44100
TONE_HZ = 440.0
NAN_EVERYWHERE, NAN_IN_ALPHA = 3, 17  # UTS01's NaN voxel columns
WORDS = [Interval(1.0, 1.4, "hello"), Interval(1.5, 2.0, "world")]
PHONES = [Interval(1.0, 1.2, "HH"), Interval(1.2, 1.4, "OW"), Interval(1.5, 2.0, "ER")]
SHORT_TEXTGRID = '''File type = "ooTextFile"
Object class = "TextGrid"

0
3.5
<exists>
2
"IntervalTier"
"Words"
0
3.5
3
0
1.25
""
1.25
2.5
"say ""hi"""
2.5
3.5
"ça"
"TextTier"
"events"
0
3.5
1
2.0
"click"
'''


def _audio_seconds(story: str) -> float:
    """The untrimmed scan's length on the audio clock, as in ds003020."""
    return (N_TRS[story] + 15) * TR - 10.0


def _tone(seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return 0.5 * np.sin(2 * np.pi * TONE_HZ * t)


def _responses(rng, subject: str, story: str) -> np.ndarray:
    data = rng.standard_normal((N_TRS[story], N_VOXELS)).astype(np.float32)
    if subject == "UTS01":
        data[:, NAN_EVERYWHERE] = np.nan
        if story == "alpha":
            data[:, NAN_IN_ALPHA] = np.nan
    return data


def _build(root: Path) -> None:
    rng = np.random.default_rng(0)
    for story in N_TRS:
        if story == STEREO_STORY:
            tone = _tone(_audio_seconds(story), STEREO_RATE)
            stereo = np.stack([tone, 0.5 * tone], axis=1)
            write_wav(root / "stimuli" / f"{story}.wav", stereo, STEREO_RATE)
        else:
            write_wav(root / "stimuli" / f"{story}.wav", _tone(_audio_seconds(story), SAMPLE_RATE))
        # One story uses capitalised tier names, as some ds003020 TextGrids do.
        names = ("Word", "Phone") if story == "alpha" else ("word", "phone")
        tiers = dict(zip(names, (WORDS, PHONES)))
        textgrid = root / "derivative" / "TextGrids" / f"{story}.TextGrid"
        write_textgrid(textgrid, tiers, _audio_seconds(story))
    for subject, stories in SUBJECT_STORIES.items():
        for story in stories:
            data = _responses(rng, subject, story)
            repeats = np.stack([data, data + 1, data - 1]) if story in PAPER_TEST else None
            write_responses(root / PRE / subject / f"{story}.hf5", data, repeats)
    # ds003020's convention: rows + 20 (UTS03's treasureisland: 414 for 394 rows).
    write_respdict(root / "derivative" / "respdict.json", {s: n + 20 for s, n in N_TRS.items()})
    voxels = np.arange(N_VOXELS)
    write_roi_masks(
        root / "derivative" / "rois" / "UTS01.hf5",
        {"AC": voxels % 5 == 0, "left": voxels < 25, "right": voxels >= 25},
    )


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ds003020")
    _build(root)
    return root


@pytest.fixture(scope="module")
def ds(pristine) -> Dataset:
    return Dataset(pristine)


@pytest.fixture
def copy(pristine, tmp_path) -> Path:
    """A private copy of the dataset that a test may break."""
    return Path(shutil.copytree(pristine, tmp_path / "ds"))


# ---- reading a good dataset -------------------------------------------------------------


def test_listing(ds):
    assert ds.subjects == ["UTS01", "UTS02"]
    assert ds.stories("UTS01") == sorted(SUBJECT_STORIES["UTS01"])
    assert ds.n_voxels("UTS01") == N_VOXELS
    assert ds.n_trs("UTS02", "beta") == N_TRS["beta"]


def test_validate_accepts_audio_ending_up_to_5_trs_before_the_last_row(copy):
    """The audio of the built dataset (rows + 15 TRs of scan less the 10 s sound start)
    passes; cut to end exactly 5 TRs before the last row it still passes, and 10 ms
    shorter it is refused."""
    for subject in Dataset(copy).subjects:
        Dataset(copy).validate(subject)
    last_row = Dataset(copy).tr_times("UTS01", "alpha")[-1]
    assert Dataset(copy).audio_margin("UTS01", "alpha") == pytest.approx(
        _audio_seconds("alpha") - last_row, abs=1 / SAMPLE_RATE
    )
    for seconds, accepted in ((last_row - 5 * TR + 0.001, True), (last_row - 5 * TR - 0.01, False)):
        write_wav(copy / ALPHA_WAV, _tone(seconds, SAMPLE_RATE))
        if accepted:
            Dataset(copy).validate("UTS01")
        else:
            with pytest.raises(DataError, match="alpha.wav"):
                Dataset(copy).validate("UTS01")


def test_responses_round_trip(ds):
    expected = _responses(np.random.default_rng(0), "UTS01", "alpha")
    Y = ds.responses("UTS01", "alpha")
    assert Y.dtype == np.float32 and Y.shape == (N_TRS["alpha"], N_VOXELS)
    np.testing.assert_array_equal(Y, expected)


def test_voxel_selection_matches_full_read(ds, monkeypatch):
    monkeypatch.setattr(dataset_module, "_ROW_BLOCK", 7)  # several blocks, a ragged last one
    full = ds.responses("UTS01", "wheretheressmoke")
    mask = np.arange(N_VOXELS) % 3 == 0
    index = np.array([7, 2, 2, -1])
    for voxels in (mask, index):
        selected = ds.responses("UTS01", "wheretheressmoke", voxels=voxels)
        np.testing.assert_array_equal(selected, full[:, voxels])
    repeats = ds.repeats("UTS01", "wheretheressmoke", voxels=mask)
    assert repeats.shape == (3, N_TRS["wheretheressmoke"], mask.sum())
    np.testing.assert_array_equal(repeats[1], full[:, mask] + 1)


@pytest.mark.parametrize("block", [slice(5, 17), slice(40, None), slice(-3, None), slice(7, 7)])
def test_voxel_slices_match_full_read(ds, block):
    full = ds.responses("UTS01", "wheretheressmoke")
    selected = ds.responses("UTS01", "wheretheressmoke", voxels=block)
    assert selected.dtype == np.float32
    np.testing.assert_array_equal(selected, full[:, block])
    repeats = ds.repeats("UTS01", "wheretheressmoke", voxels=block)
    np.testing.assert_array_equal(repeats, ds.repeats("UTS01", "wheretheressmoke")[:, :, block])


def test_voxel_slice_of_float64_file_is_float32(tmp_path):
    """Files written by other tools may hold float64; a slice still comes back as float32."""
    root = tmp_path / "ds"
    (root / "stimuli").mkdir(parents=True)
    (root / PRE / "UTS01").mkdir(parents=True)
    data = np.random.default_rng(4).standard_normal((6, 9))
    with h5py.File(root / PRE / "UTS01" / "a.hf5", "w") as f:
        f["data"] = data
    block = Dataset(root).responses("UTS01", "a", voxels=slice(2, 6))
    assert block.dtype == np.float32
    np.testing.assert_array_equal(block, data[:, 2:6].astype(np.float32))


def test_voxel_slice_must_be_contiguous(ds):
    with pytest.raises(DataError, match="alpha.hf5.*contiguous"):
        ds.responses("UTS01", "alpha", voxels=slice(0, 10, 2))


def test_repeats_absent_is_none(ds):
    assert ds.repeats("UTS01", "alpha") is None


def test_tr_times_convention(pristine):
    n = N_TRS["alpha"]
    times = Dataset(pristine).tr_times("UTS01", "alpha")
    assert times.dtype == np.float64 and times.shape == (n,)
    np.testing.assert_allclose(times, (np.arange(n) + 10) * TR + TR / 2 - 10.0)
    assert times[0] == pytest.approx(11.04725)
    # Same 15 trimmed TRs in total, so respdict.json still agrees.
    shifted = Dataset(pristine, tr=2.0, sound_start=0.0, trim_start=0, trim_end=15)
    shifted = shifted.tr_times("UTS01", "alpha")
    np.testing.assert_allclose(shifted, np.arange(n) * 2.0 + 1.0)


def test_audio_at_native_rate(ds):
    audio = ds.audio("alpha")
    assert audio.dtype == np.float32
    assert len(audio) == round(_audio_seconds("alpha") * SAMPLE_RATE)
    np.testing.assert_allclose(audio, _tone(_audio_seconds("alpha"), SAMPLE_RATE), atol=1e-4)


def test_stereo_44k_is_averaged_and_resampled(ds):
    n_native = round(_audio_seconds(STEREO_STORY) * STEREO_RATE)
    audio = ds.audio(STEREO_STORY)
    assert len(audio) == int(np.ceil(n_native * SAMPLE_RATE / STEREO_RATE))
    # The mean of the channels is 0.75 of the tone; away from the filter's edge effects
    # it should survive resampling almost exactly.
    expected = 0.75 * _tone(len(audio) / SAMPLE_RATE, SAMPLE_RATE)
    np.testing.assert_allclose(audio[1000:-1000], expected[1000:-1000], atol=2e-3)
    assert ds.audio_duration(STEREO_STORY) == pytest.approx(n_native / STEREO_RATE)


def test_read_wav_scales_int_pcm(tmp_path):
    path = tmp_path / "x.wav"
    write_wav(path, np.array([0.0, 1.0, -1.0, 0.25]), 8000)
    audio, rate = read_wav(path)
    assert rate == 8000 and wav_duration(path) == pytest.approx(4 / 8000)
    np.testing.assert_allclose(audio, [0.0, 1.0, -1.0, 0.25], atol=1 / 32767)


def test_resample_length():
    assert len(resample(np.zeros(44100, np.float32), 44100, 16000)) == 16000
    assert len(resample(np.zeros(22050, np.float32), 22050, 16000)) == 16000


def test_words_and_phones(ds):
    for story in ("alpha", "beta"):  # capitalised and lower-case tier names
        assert ds.words(story) == WORDS
        assert ds.phones(story) == PHONES


def test_textgrid_writer_fills_gaps(pristine):
    tiers = read_textgrid(pristine / "derivative" / "TextGrids" / "beta.TextGrid")
    word = tiers["word"]
    assert word[0] == Interval(0.0, 1.0, "")
    assert word[-1].end == pytest.approx(_audio_seconds("beta"))
    assert all(a.end == b.start for a, b in zip(word, word[1:]))
    assert [w for w in word if w.label] == WORDS


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
def test_short_textgrid(tmp_path, encoding):
    path = tmp_path / "short.TextGrid"
    path.write_text(SHORT_TEXTGRID, encoding=encoding)
    tiers = read_textgrid(path)
    assert tiers["Words"] == [
        Interval(0.0, 1.25, ""), Interval(1.25, 2.5, 'say "hi"'), Interval(2.5, 3.5, "ça")
    ]
    assert tiers["events"] == [Interval(2.0, 2.0, "click")]


def test_long_textgrid_round_trip_quotes(tmp_path):
    path = tmp_path / "long.TextGrid"
    tiers = {"words": [Interval(0.5, 1.0, 'a "quoted" word'), Interval(1.0, 2.0, "né")]}
    write_textgrid(path, tiers, 2.0)
    assert read_textgrid(path) == {"words": [Interval(0.0, 0.5, ""), *tiers["words"]]}


def test_textgrid_writer_snaps_float_noise_and_rejects_overlaps(tmp_path):
    path = tmp_path / "noisy.TextGrid"
    noisy = [Interval(0.0, 0.3, "a"), Interval(0.3 - 1e-12, 1.0 + 1e-12, "b")]
    write_textgrid(path, {"word": noisy}, 1.0)
    assert read_textgrid(path)["word"] == [Interval(0.0, 0.3, "a"), Interval(0.3, 1.0, "b")]
    with pytest.raises(ValueError, match="overlaps"):
        write_textgrid(path, {"word": [Interval(0.0, 0.3, "a"), Interval(0.2, 0.4, "b")]}, 1.0)


def test_roi_masks(ds, copy):
    masks = ds.roi_masks("UTS01")
    assert set(masks) == {"AC", "left", "right"}
    assert all(m.dtype == bool and m.shape == (N_VOXELS,) for m in masks.values())
    np.testing.assert_array_equal(masks["left"], np.arange(N_VOXELS) < 25)
    assert ds.roi_masks("UTS02") == {}
    with h5py.File(copy / "derivative" / "rois" / "UTS02.hf5", "w") as f:
        f["AC"] = (np.arange(N_VOXELS) < 10).astype(np.uint8)  # 0/1 integers are accepted
    np.testing.assert_array_equal(Dataset(copy).roi_masks("UTS02")["AC"], np.arange(N_VOXELS) < 10)


def test_nan_voxels(ds):
    assert np.flatnonzero(ds.nan_voxels("UTS01")).tolist() == [NAN_EVERYWHERE, NAN_IN_ALPHA]
    only_test = ds.nan_voxels("UTS01", stories=["wheretheressmoke"])
    assert np.flatnonzero(only_test).tolist() == [NAN_EVERYWHERE]
    assert not ds.nan_voxels("UTS02").any()


def test_nan_voxels_are_cached_per_file_until_it_changes(copy, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("BRAINSWEEP_CACHE", str(cache))
    ds = Dataset(copy)
    expected = [NAN_EVERYWHERE, NAN_IN_ALPHA]
    assert np.flatnonzero(ds.nan_voxels("UTS01")).tolist() == expected
    assert len(list((cache / "nan_voxels").glob("*.npy"))) == len(SUBJECT_STORIES["UTS01"])

    # New values in place: same size, and the modification time put back. The second
    # call reads only the cache, so it still reports the old mask...
    path = copy / ALPHA_HF5
    stat = path.stat()
    with h5py.File(path, "a") as f:
        f["data"][:, NAN_IN_ALPHA] = 0.0
        f["data"][2, 30] = np.nan
    assert path.stat().st_size == stat.st_size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert np.flatnonzero(ds.nan_voxels("UTS01")).tolist() == expected

    # ...and once the file's time changes, it is read again.
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert np.flatnonzero(ds.nan_voxels("UTS01")).tolist() == [NAN_EVERYWHERE, 30]
    assert np.flatnonzero(ds.nan_voxels("UTS01", ["alpha"])).tolist() == [NAN_EVERYWHERE, 30]


@pytest.mark.parametrize("offset", [0, 20])
def test_respdict_holds_rows_plus_20_or_rows(copy, offset):
    n = N_TRS["alpha"]
    write_respdict(copy / RESPDICT, {"alpha": n + offset})
    assert Dataset(copy).n_trs("UTS01", "alpha") == n
    assert Dataset(copy).tr_times("UTS01", "alpha").shape == (n,)


@pytest.mark.parametrize("offset", [15, 19, 21, -1])
def test_respdict_other_counts_are_refused(copy, offset):
    n = N_TRS["alpha"]
    write_respdict(copy / RESPDICT, {"alpha": n + offset})
    with pytest.raises(DataError) as error:
        Dataset(copy).n_trs("UTS01", "alpha")
    message = str(error.value)
    for part in (str(copy / RESPDICT), "'alpha'", f"{n + offset} TRs", str(copy / ALPHA_HF5),
                 f"{n} rows", f"expected {n + 20}"):
        assert part in message


def test_respdict_absent_is_fine(copy):
    (copy / RESPDICT).unlink()
    assert Dataset(copy).n_trs("UTS01", "alpha") == N_TRS["alpha"]


def test_split_defaults_and_explicit(ds):
    assert ds.split("UTS01") == Split(train=("alpha",), val=PAPER_VAL, test=PAPER_TEST)
    assert ds.split("UTS02", val="beta") == Split(train=("alpha",), val=("beta",), test=PAPER_TEST)
    assert ds.split("UTS02", test=["alpha"], val=()) == Split(
        train=("beta", "wheretheressmoke"), val=(), test=("alpha",)
    )


def test_writers_round_trip(tmp_path):
    data = np.arange(12, dtype=np.float64).reshape(3, 4)
    write_responses(tmp_path / "r.hf5", data, repeats=np.stack([data, data]))
    with h5py.File(tmp_path / "r.hf5") as f:
        assert f["data"].dtype == np.float32 and f["individual_repeats"].shape == (2, 3, 4)
        np.testing.assert_array_equal(f["data"][()], data)
    write_roi_masks(tmp_path / "m.hf5", {"AC": np.array([1, 0, 1])})
    with h5py.File(tmp_path / "m.hf5") as f:
        assert f["AC"].dtype == bool
    write_respdict(tmp_path / "d" / "respdict.json", {"b": 3, "a": 2})
    assert json.loads((tmp_path / "d" / "respdict.json").read_text()) == {"a": 2, "b": 3}


# ---- every bad input is a one-line DataError naming the file, subject or story -----------


def _write_text(relative: str | Path, text: str = "not what you expect"):
    def mutate(root: Path) -> None:
        (root / relative).write_text(text)
    return mutate


def _remove(relative: str | Path):
    def mutate(root: Path) -> None:
        path = root / relative
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return mutate


def _edit_h5(relative: str | Path, edit):
    def mutate(root: Path) -> None:
        with h5py.File(root / relative, "a") as f:
            edit(f)
    return mutate


def _short_audio(root: Path) -> None:
    write_wav(root / ALPHA_WAV, np.zeros(10 * SAMPLE_RATE))


def _nothing(root: Path) -> None:
    pass


def _replace(name, data):
    def edit(f):
        del f[name]
        f[name] = data
    return edit


BAD_INPUTS = {
    # id: (how to break the dataset, what to call, what the message must name)
    "root missing": (_nothing, lambda r: Dataset(r / "nowhere"), ["nowhere"]),
    "no stimuli/": (_remove("stimuli"), Dataset, ["stimuli"]),
    "no preprocessed_data/": (_remove(PRE), Dataset, [str(PRE)]),
    "unknown subject": (
        _nothing, lambda r: Dataset(r).stories("UTS99"), ["UTS99", "UTS01, UTS02"]
    ),
    "unknown story": (
        _nothing, lambda r: Dataset(r).responses("UTS02", "gamma"), ["'gamma'", "alpha, beta"]
    ),
    "missing audio": (
        _remove(ALPHA_WAV), lambda r: Dataset(r).audio("alpha"), [str(ALPHA_WAV)]
    ),
    "missing audio (validate)": (
        _remove(ALPHA_WAV), lambda r: Dataset(r).validate("UTS01"), [str(ALPHA_WAV)]
    ),
    "corrupt wav": (_write_text(ALPHA_WAV), lambda r: Dataset(r).audio("alpha"), [str(ALPHA_WAV)]),
    "corrupt hf5 (responses)": (
        _write_text(ALPHA_HF5),
        lambda r: Dataset(r).responses("UTS01", "alpha"),
        [str(ALPHA_HF5)],
    ),
    "corrupt hf5 (validate)": (
        _write_text(ALPHA_HF5), lambda r: Dataset(r).validate("UTS01"), [str(ALPHA_HF5)]
    ),
    "no data dataset": (
        _edit_h5(ALPHA_HF5, lambda f: f.move("data", "other")),
        lambda r: Dataset(r).n_trs("UTS01", "alpha"),
        [str(ALPHA_HF5), "'data'"],
    ),
    "1-D data": (
        _edit_h5(ALPHA_HF5, _replace("data", np.zeros(5))),
        lambda r: Dataset(r).responses("UTS01", "alpha"),
        [str(ALPHA_HF5), "(n_trs, n_voxels)"],
    ),
    "voxel counts disagree": (
        _edit_h5(PRE / "UTS02/beta.hf5", _replace("data", np.zeros((N_TRS["beta"], 51)))),
        lambda r: Dataset(r).validate("UTS02"),
        ["UTS02/beta.hf5: 51 voxels, but UTS02's other stories have 50"],
    ),
    "repeats of the wrong shape": (
        _edit_h5(PRE / "UTS01/wheretheressmoke.hf5", _replace("individual_repeats", np.zeros(3))),
        lambda r: Dataset(r).repeats("UTS01", "wheretheressmoke"),
        ["UTS01/wheretheressmoke.hf5", "individual_repeats"],
    ),
    "respdict count wrong": (
        _write_text(RESPDICT, json.dumps({"alpha": 99})),
        lambda r: Dataset(r).validate("UTS01"),
        [str(RESPDICT), "'alpha'", "99", str(ALPHA_HF5)],
    ),
    "respdict not JSON": (
        _write_text(RESPDICT, "{oops"),
        lambda r: Dataset(r).n_trs("UTS01", "alpha"),
        [str(RESPDICT)],
    ),
    "audio too short": (
        _short_audio, lambda r: Dataset(r).validate("UTS01"), [str(ALPHA_WAV), "UTS01/alpha"]
    ),
    "ROI mask wrong length": (
        _edit_h5(ROIS, _replace("AC", np.ones(N_VOXELS - 1, bool))),
        lambda r: Dataset(r).validate("UTS01"),
        [str(ROIS), "'AC'", "(50,)"],
    ),
    "ROI mask not 0/1": (
        _edit_h5(ROIS, _replace("AC", np.full(N_VOXELS, 2))),
        lambda r: Dataset(r).roi_masks("UTS01"),
        [str(ROIS), "'AC'"],
    ),
    "ROI file corrupt": (_write_text(ROIS), lambda r: Dataset(r).roi_masks("UTS01"), [str(ROIS)]),
    "voxel mask wrong length": (
        _nothing,
        lambda r: Dataset(r).responses("UTS01", "alpha", voxels=np.ones(N_VOXELS + 1, bool)),
        [str(ALPHA_HF5), "(50,)"],
    ),
    "voxel index out of range": (
        _nothing,
        lambda r: Dataset(r).responses("UTS01", "alpha", voxels=np.array([0, N_VOXELS])),
        [str(ALPHA_HF5), "50 voxels"],
    ),
    "missing TextGrid": (
        _remove(ALPHA_TEXTGRID), lambda r: Dataset(r).words("alpha"), [str(ALPHA_TEXTGRID)]
    ),
    "TextGrid without word tier": (
        lambda r: write_textgrid(r / ALPHA_TEXTGRID, {"phone": PHONES}, 60.0),
        lambda r: Dataset(r).words("alpha"),
        [str(ALPHA_TEXTGRID), "'word'", "phone"],
    ),
    "TextGrid cut short": (
        _write_text(ALPHA_TEXTGRID, SHORT_TEXTGRID[:120]),
        lambda r: Dataset(r).phones("alpha"),
        [str(ALPHA_TEXTGRID)],
    ),
    "TextGrid not a TextGrid": (
        _write_text(ALPHA_TEXTGRID, '"ooTextFile" "Pitch" 1 2'),
        lambda r: Dataset(r).words("alpha"),
        [str(ALPHA_TEXTGRID), "Pitch"],
    ),
    "split: paper story missing": (
        _nothing,
        lambda r: Dataset(r).split("UTS02"),
        ["UTS02", "fromboyhoodtofatherhood", "val="],
    ),
    "split: unknown story": (
        _nothing,
        lambda r: Dataset(r).split("UTS01", test="gamma"),
        ["'gamma'", "alpha, fromboyhoodtofatherhood"],
    ),
    "split: test and val overlap": (
        _nothing,
        lambda r: Dataset(r).split("UTS02", test="alpha", val=["alpha"]),
        ["UTS02", "alpha"],
    ),
    "split: no training story": (
        _nothing,
        lambda r: Dataset(r).split("UTS02", test=["alpha", "beta"], val=PAPER_TEST),
        ["UTS02", "training"],
    ),
}


@pytest.mark.parametrize("mutate, call, expected", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_raises_one_line_data_error(copy, mutate, call, expected):
    mutate(copy)
    with pytest.raises(DataError) as error:
        call(copy)
    message = str(error.value)
    assert "\n" not in message
    for part in expected:
        assert part in message
