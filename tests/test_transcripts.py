"""Transcripts as ds003020 has them: Praat's three text formats and the spoken words.

The real files (``shared/real-ds003020/TextGrids``, beside the clone) are checked against a
minimal reader written here from the reference's behaviour (Huth lab ``textgrid.py`` and
``dsutils.make_word_ds``: the second tier's intervals, labels compared after lower-casing
and stripping braces and spaces against the non-speech markers), independent of
:mod:`core.data.textgrid`'s tokeniser.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from core.data.dataset import Dataset, Interval, is_marker
from core.data.textgrid import read_textgrid
from core.errors import DataError

REAL = Path(__file__).parents[1].parent / "shared" / "real-ds003020"
REAL_GRIDS = sorted((REAL / "TextGrids").glob("*.TextGrid"))
REFERENCE_MARKERS = {"sentence_start", "sentence_end", "br", "lg", "ls", "ns", "sp"}

needs_real = pytest.mark.skipif(not REAL_GRIDS, reason=f"{REAL}: real ds003020 files absent")


def reference_word_tier(path: Path) -> list[tuple[float, float, str]]:
    """The second tier's intervals, read line by line as each format lays them out."""
    lines = [line.strip() for line in path.read_text().splitlines()]
    if lines[0] == '"Praat chronological TextGrid text file"':
        n_tiers = int(lines[2].split()[0])
        out, i = [], 3 + n_tiers
        while i < len(lines):
            if not lines[i]:
                i += 1
                continue
            tier, start, end = lines[i].split()
            if tier == "2":
                out.append((float(start), float(end), lines[i + 1][1:-1]))
            i += 2
        return out
    if lines[3].startswith("xmin"):  # long format: "item [2]:" then "intervals [n]:" blocks
        out, tier = [], None
        for i, line in enumerate(lines):
            if line.startswith("item [") and line != "item []:":
                tier = line[len("item ["):line.index("]")]
            elif tier == "2" and line.startswith("intervals ["):
                start, end, text = (lines[i + k].split("=", 1)[1].strip() for k in (1, 2, 3))
                out.append((float(start), float(end), text[1:-1]))
        return out
    # short format: header of 7 lines, then per tier class, name, xmin, xmax, count, items
    i = 7
    for tier in (1, 2):
        count = int(lines[i + 4])
        values = lines[i + 5:i + 5 + 3 * count]
        i += 5 + 3 * count
    return [(float(values[k]), float(values[k + 1]), values[k + 2][1:-1]) for k in range(0, len(values), 3)]


def reference_spoken(path: Path) -> list[tuple[float, float, str]]:
    """What make_word_ds keeps, less its one quirk (intervals with an empty label)."""
    return [(a, b, label.strip()) for a, b, label in reference_word_tier(path)
            if label.lower().strip("{}").strip() not in REFERENCE_MARKERS and label.strip()]


def _dataset_with(tmp_path: Path, grid: Path) -> Dataset:
    """A dataset folder holding only ``grid`` (enough for Dataset.words)."""
    grids = tmp_path / "derivative" / "TextGrids"
    grids.mkdir(parents=True)
    (tmp_path / "derivative" / "preprocessed_data").mkdir()
    (tmp_path / "stimuli").mkdir()
    shutil.copy(grid, grids / grid.name)
    return Dataset(tmp_path)


@needs_real
@pytest.mark.parametrize("grid", REAL_GRIDS, ids=lambda p: p.stem)
def test_every_real_textgrid_reads_and_its_spoken_words_are_the_references(tmp_path, grid):
    tiers = read_textgrid(grid)
    assert list(tiers) == ["phone", "word"]
    assert [tuple(w) for w in tiers["word"]] == reference_word_tier(grid)
    words = _dataset_with(tmp_path, grid).words(grid.stem)
    assert [tuple(w) for w in words] == reference_spoken(grid)
    assert len(words) > 1000


@needs_real
def test_the_chronological_format_gives_the_intervals_of_the_long_one(tmp_path):
    """A real long-format file rewritten by hand in Praat's chronological format."""
    long = REAL / "TextGrids" / "avatar.TextGrid"
    tiers = read_textgrid(long)
    end = max(i.end for intervals in tiers.values() for i in intervals)
    lines = ['"Praat chronological TextGrid text file"', f"0 {end!r}   ! Time domain.",
             f"{len(tiers)}   ! Number of tiers."]
    lines += [f'"IntervalTier" "{name}" 0 {end!r}' for name in tiers]
    items = sorted((i.start, k, n, i) for k, intervals in enumerate(tiers.values(), 1)
                   for n, i in enumerate(intervals))
    for _, k, _, (start, stop, label) in items:
        lines += ["", f"{k} {start!r} {stop!r}", f'"{label}"']
    chronological = tmp_path / "avatar.TextGrid"
    chronological.write_text("\n".join(lines) + "\n")
    assert read_textgrid(chronological) == tiers


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "latin-1"])
def test_a_chronological_file_in_each_encoding_praat_writes(tmp_path, encoding):
    path = tmp_path / "small.TextGrid"
    path.write_text('"Praat chronological TextGrid text file"\n0 3   ! Time domain.\n2   ! Number of tiers.\n'
                    '"IntervalTier" "word" 0 3\n"TextTier" "events" 0 3\n'
                    '1 0.5 1.5\n"ça"\n2 1.0\n"click"\n1 1.5 3\n"say ""hi"""\n', encoding=encoding)
    assert read_textgrid(path) == {"word": [Interval(0.5, 1.5, "ça"), Interval(1.5, 3.0, 'say "hi"')],
                                   "events": [Interval(1.0, 1.0, "click")]}


@pytest.mark.parametrize("content", [b"ooBinaryFile\x08TextGrid\x00\x01", b"hello world\n", b""])
def test_a_file_in_no_praat_text_format_is_one_error_naming_it(tmp_path, content):
    path = tmp_path / "odd.TextGrid"
    path.write_bytes(content)
    with pytest.raises(DataError, match="odd.TextGrid: not a TextGrid in Praat's long, short or chronological"):
        read_textgrid(path)


def test_markers_are_compared_as_the_reference_compares_them():
    assert all(map(is_marker, ["sp", "SP", "{LG}", "{ns}", " {BR} ", "sentence_start", "SENTENCE_END", "{LS}"]))
    assert not any(map(is_marker, ["SPEAK", "I", "{LAUGH}", "br-", "sentence"]))


def _with_own_textgrids(data: Path, root: Path) -> Path:
    """``data`` (read-only, shared) seen through links, with a private copy of its TextGrids to break."""
    (root / "derivative").mkdir(parents=True)
    for item in data.iterdir():
        if item.name != "derivative":
            (root / item.name).symlink_to(item)
    for item in (data / "derivative").iterdir():
        if item.name == "TextGrids":
            shutil.copytree(item, root / "derivative" / item.name)
        else:
            (root / "derivative" / item.name).symlink_to(item)
    return root


def test_a_missing_textgrid_is_named_by_the_check_and_refused_by_a_probes_dry_run(small_data, tmp_path, capsys):
    from core.cli import run
    from core.data import check
    from sweeper.launch import main as launch_main

    data = _with_own_textgrids(small_data, tmp_path / "data")
    story = Dataset(data).split("UTS01").train[0]
    lost = Dataset(data).textgrid_path(story)
    lost.unlink()
    assert run(check.main, ["--data", str(data), "--subject", "UTS01"]) == 1
    problems = [line for line in capsys.readouterr().out.splitlines() if line.startswith("problem:")]
    assert problems == [f"problem: {lost}: TextGrid for story {story!r} not found"]

    space = Path(__file__).parents[1] / "search_spaces" / "probes.yaml"
    assert run(launch_main, ["--config", str(space), "--data", str(data), "--storage", str(tmp_path / "sweep"),
                             "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {space}: probes (acoustic, planted, unchanged) need the transcripts of 1 story without")
    assert f"({story})" in err and str(lost) in err and "\n" not in err
    assert not (tmp_path / "sweep").exists()


def test_a_study_that_fails_after_training_loses_nothing(small_data, tmp_path, monkeypatch, capsys):
    """The probes' TextGrid vanishes during training: the results are written, then the run
    fails naming the study; once the file is back, the same command repeats only the evaluation."""
    from core import train
    from core.cli import run
    from core.tuning.trainer import Trainer

    data = _with_own_textgrids(small_data, tmp_path / "data")
    story = Dataset(data).split("UTS01").train[0]
    grid = Dataset(data).textgrid_path(story)
    kept = grid.read_bytes()
    out = tmp_path / "run"
    argv = ["--data", str(data), "--subject", "UTS01", "--out", str(out)]
    for key, value in {"readout_layer": 3, "lora_layers": "[3]", "epochs": 1, "bottleneck": 8, "device": "cpu",
                       "probes": "[acoustic]", "probe_layers": "[3]"}.items():
        argv += ["--set", f"{key}={value}"]
    started = Trainer.__init__

    def start_then_lose_the_textgrid(self, *args, **kwargs):
        started(self, *args, **kwargs)  # the checks before training pass
        grid.unlink()

    monkeypatch.setattr(Trainer, "__init__", start_then_lose_the_textgrid)
    assert run(train.main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: probes failed after training") and f"{grid}: TextGrid for story {story!r}" in err
    assert f"{out}/summary.json" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_epoch"] in (0, 1) and 0 < summary["tuned"]["mean_r"] < 1
    assert summary["probes"] == {} and set(summary["failed_studies"]) == {"probes"}
    with h5py.File(out / "voxel_r.hf5") as f:
        assert np.isfinite(f["tuned_r"][:]).any()

    monkeypatch.setattr(Trainer, "__init__", started)
    assert run(train.main, argv) == 2  # still missing: refused before anything runs
    assert f"({story})" in capsys.readouterr().err
    grid.write_bytes(kept)
    assert run(train.main, argv) == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["history"] == summary["history"] and again["tuned"] == summary["tuned"]  # not trained again
    assert again["failed_studies"] == {} and set(again["probes"]["acoustic"]["3"]) == {"pretrained", "tuned"}
