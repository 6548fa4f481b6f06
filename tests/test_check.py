"""``python -m core.check`` on a dataset written here with h5py and scipy directly.

The files follow ds003020's own conventions, not our writers': respdict.json holds
rows + 20, rows are trimmed, audio is 44.1 kHz stereo 16-bit PCM starting 10 s into the
scan, the test story carries ``individual_repeats`` whose mean (float64, stored float32)
is ``data``, some voxels are NaN, an ROI file holds a bool and a 0/1 mask, and each story
has a long-format TextGrid (phone then word tier, UPPER case, with non-speech markers).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy.io import wavfile

from core.data.check import check_subject, main
from core.data.dataset import Dataset

TR, RATE = 2.0045, 44100
N_VOXELS = 30
ROWS = {"storya": 8, "wheretheressmoke": 10}
N_REPEATS = 3
NAN_EVERYWHERE, NAN_IN_STORYA = 3, 7
AC = np.arange(N_VOXELS) < 6
PRE = Path("derivative") / "preprocessed_data" / "UTS03"
RESPDICT = Path("derivative") / "respdict.json"
ROIS = Path("derivative") / "rois" / "UTS03.hf5"
GRIDS = Path("derivative") / "TextGrids"
# The word tier: (start, end, label); two spoken words among markers and an empty interval.
WORD_TIER = [(0.0, 1.0, "{NS}"), (1.0, 1.5, "HELLO"), (1.5, 1.7, "sp"), (1.7, 2.2, "WORLD"), (2.2, 4.0, "")]


def _write_textgrid(path: Path, words=WORD_TIER) -> None:
    """Praat's long text format, as ds003020's files have it (trailing spaces included)."""
    end = words[-1][1]
    lines = ['File type = "ooTextFile"', 'Object class = "TextGrid"', "", "xmin = 0 ", f"xmax = {end} ",
             "tiers? <exists> ", "size = 2 ", "item []: "]
    for k, (name, tier) in enumerate([("phone", [(0.0, end, "sp")]), ("word", words)], 1):
        lines += [f"    item [{k}]:", '        class = "IntervalTier" ', f'        name = "{name}" ',
                  "        xmin = 0 ", f"        xmax = {end} ", f"        intervals: size = {len(tier)} "]
        for n, (start, stop, label) in enumerate(tier, 1):
            lines += [f"        intervals [{n}]:", f"            xmin = {start} ", f"            xmax = {stop} ",
                      f'            text = "{label}" ']
    path.write_text("\n".join(lines) + "\n")


def _last_row_time(rows: int) -> float:
    """Row i is untrimmed TR i + 10, at (i + 10) * TR + TR / 2 s of scan, 10 s before the audio."""
    return (rows - 1 + 10) * TR + TR / 2 - 10.0


def _write_audio(path: Path, seconds: float) -> None:
    t = np.arange(int(seconds * RATE)) / RATE
    tone = (8000 * np.sin(2 * np.pi * 220 * t)).astype(np.int16)
    wavfile.write(path, RATE, np.stack([tone, tone // 2], axis=1))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ds003020")
    rng = np.random.default_rng(0)
    (root / "stimuli").mkdir()
    (root / PRE).mkdir(parents=True)
    (root / ROIS.parent).mkdir(parents=True)
    (root / GRIDS).mkdir(parents=True)
    for story, rows in ROWS.items():
        _write_audio(root / "stimuli" / f"{story}.wav", _last_row_time(rows) + 6.0)
        _write_textgrid(root / GRIDS / f"{story}.TextGrid")
        with h5py.File(root / PRE / f"{story}.hf5", "w") as f:
            if story == "wheretheressmoke":
                repeats = rng.standard_normal((N_REPEATS, rows, N_VOXELS)).astype(np.float32)
                repeats[:, :, NAN_EVERYWHERE] = np.nan
                f["individual_repeats"] = repeats
                f["data"] = repeats.mean(axis=0, dtype=np.float64).astype(np.float32)
            else:
                data = rng.standard_normal((rows, N_VOXELS)).astype(np.float32)
                data[:, [NAN_EVERYWHERE, NAN_IN_STORYA]] = np.nan
                f["data"] = data
    (root / RESPDICT).write_text(json.dumps({story: rows + 20 for story, rows in ROWS.items()}))
    with h5py.File(root / ROIS, "w") as f:
        f["AC"] = AC
        f["left"] = (np.arange(N_VOXELS) < 15).astype(np.uint8)
    return root


@pytest.fixture
def copy(pristine, tmp_path, monkeypatch) -> Path:
    """A private copy that a test may break, with its own NaN-mask cache."""
    monkeypatch.setenv("BRAINSWEEP_CACHE", str(tmp_path / "cache"))
    return Path(shutil.copytree(pristine, tmp_path / "ds"))


def _run(root: Path, capsys) -> tuple[int, list[str]]:
    code = main(["--data", str(root)])
    return code, capsys.readouterr().out.splitlines()


def test_a_good_dataset_gets_its_table_and_exit_0(copy, capsys):
    code, lines = _run(copy, capsys)
    assert code == 0
    assert lines[0] == (f"UTS03: 2 stories, {N_VOXELS} voxels, 2 NaN voxels in any story, "
                        f"test story wheretheressmoke: {N_REPEATS} repeats")
    table = {line.split()[0]: line.split() for line in lines[2:4]}
    for story, rows in ROWS.items():
        cells = table[story]
        assert cells[1:5] == [str(rows), str(N_VOXELS), str(rows + 20), "(rows+20)"]
        assert float(cells[5]) == pytest.approx(_last_row_time(rows) + 6.0, abs=0.05)
        assert cells[6:9] == ["yes", "(+6.0", "s)"]
    assert table["storya"][9:] == ["-", "-", "2", "2"]  # NaN voxels, spoken words
    assert table["wheretheressmoke"][9:11] == [str(N_REPEATS), "yes"]
    assert table["wheretheressmoke"][-2:] == ["1", "2"]
    assert "ROI masks (voxels): AC 6, left 15" in lines
    assert not [line for line in lines if line.startswith(("problem:", "warning:"))]
    assert lines[-1] == "no problems found"

    check = check_subject(Dataset(copy), "UTS03", progress=lambda message: None)
    assert check.problems == [] and check.nan_voxels == 2
    assert check.stories[1].repeats_error < 1e-6


def _respdict_off_by_one(root: Path) -> None:
    (root / RESPDICT).write_text(json.dumps({"storya": ROWS["storya"] + 21, "wheretheressmoke": 30}))


def _audio_too_short(root: Path) -> None:
    _write_audio(root / "stimuli" / "storya.wav", _last_row_time(ROWS["storya"]) - 6 * TR)


def _data_not_mean_of_repeats(root: Path) -> None:
    with h5py.File(root / PRE / "wheretheressmoke.hf5", "a") as f:
        f["data"][4, 10] += 0.05


def _roi_mask_wrong_length(root: Path) -> None:
    with h5py.File(root / ROIS, "a") as f:
        del f["AC"]
        f["AC"] = np.ones(N_VOXELS - 1, dtype=bool)


def _textgrid_missing(root: Path) -> None:
    (root / GRIDS / "storya.TextGrid").unlink()


def _words_past_the_audio(root: Path) -> None:
    _write_textgrid(root / GRIDS / "wheretheressmoke.TextGrid", [*WORD_TIER[:-1], (2.2, 900.0, "LATE")])


BROKEN = {
    # id: (how to break the dataset, what its one problem line must name)
    "respdict off by one": (_respdict_off_by_one, [str(RESPDICT), "'storya'", "29 TRs", "8 rows", "expected 28"]),
    "audio too short": (_audio_too_short, [str(Path("stimuli") / "storya.wav"), "UTS03/storya"]),
    "data is not the mean of its repeats": (_data_not_mean_of_repeats, ["wheretheressmoke.hf5", "individual_repeats"]),
    "ROI mask of the wrong length": (_roi_mask_wrong_length, [str(ROIS), "'AC'", f"({N_VOXELS},)"]),
    "TextGrid missing": (_textgrid_missing, [str(GRIDS / "storya.TextGrid"), "'storya'", "not found"]),
    "words past the audio's end": (_words_past_the_audio, [str(GRIDS / "wheretheressmoke.TextGrid"), "'LATE'",
                                                           "outside its"]),
}


@pytest.mark.parametrize("breaks, names", BROKEN.values(), ids=BROKEN.keys())
def test_each_problem_is_one_line_and_a_nonzero_exit(copy, capsys, breaks, names):
    breaks(copy)
    code, lines = _run(copy, capsys)
    assert code != 0
    problems = [line for line in lines if line.startswith("problem:")]
    assert len(problems) == 1, problems
    for part in names:
        assert part in problems[0]
    assert lines[-1] == "1 problem found"
    assert lines[0].startswith("UTS03: 2 stories")  # the table is still printed


def test_problems_add_up(copy, capsys):
    for breaks, _ in BROKEN.values():
        breaks(copy)
    code, lines = _run(copy, capsys)
    assert code != 0
    assert len([line for line in lines if line.startswith("problem:")]) == len(BROKEN)
    assert lines[-1] == f"{len(BROKEN)} problems found"


def test_a_broken_response_file_leaves_the_roi_line_true(copy, capsys):
    path = copy / PRE / "storya.hf5"
    path.write_bytes(path.read_bytes()[:2000])  # truncated, as an interrupted copy leaves it
    code, lines = _run(copy, capsys)
    problems = [line for line in lines if line.startswith("problem:")]
    assert code != 0 and len(problems) == 1 and "storya.hf5" in problems[0]
    assert "ROI masks (voxels): AC 6, left 15" in lines


def test_low_rate_audio_and_a_dataset_without_textgrids_get_warnings_not_problems(copy, capsys):
    rate = 8000
    t = np.arange(int((_last_row_time(ROWS["storya"]) + 6.0) * rate)) / rate
    wavfile.write(copy / "stimuli" / "storya.wav", rate, (8000 * np.sin(2 * np.pi * 220 * t)).astype(np.int16))
    shutil.rmtree(copy / GRIDS)
    code, lines = _run(copy, capsys)
    warnings = [line for line in lines if line.startswith("warning:")]
    assert code == 0 and lines[-1] == "no problems found"
    assert len(warnings) == 2
    assert str(GRIDS) in warnings[0] and "no TextGrids" in warnings[0] and "probes" in warnings[0]
    assert "storya.wav" in warnings[1] and "8000 Hz" in warnings[1] and "4 kHz" in warnings[1]
    with pytest.warns(UserWarning, match="8000 Hz"):
        Dataset(copy).audio("storya")
