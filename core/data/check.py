"""Check a dataset folder as users have it: one table per subject, one line per problem.

``python -m core.check --data DIR [--subject S ...] [--tr 2.0]`` reads every subject (or
the given ones) of a ds003020-layout folder and prints, per subject, a table of its
stories (rows, voxels, respdict.json's count, audio duration against the TR grid,
repeats and whether ``data`` is their mean, NaN voxels, spoken words of the TextGrid) and
its ROI masks with their sizes, then each problem on one line starting with ``problem:``
and each warning (audio below 16 kHz, no TextGrids at all) with ``warning:``. The exit
status is 1 when there is any problem, 0 otherwise (2 when the folder is not a dataset at
all).

TextGrids: when the dataset has any (``derivative/TextGrids/``), every story's is read
(any of Praat's text formats), must have a word tier, and its words must lie inside the
story's audio (:meth:`core.data.dataset.Dataset.check_transcript`); a missing one is a problem,
since the word-level studies (probes) need them. A dataset without any gets one warning.

Responses are streamed: NaN masks are read in blocks of rows (and cached, see
:meth:`core.data.dataset.Dataset.nan_voxels`), repeats in blocks of voxel columns, so a
subject's responses are never held at once. The checks are :class:`core.data.dataset.Dataset`'s
own (those :meth:`~core.data.dataset.Dataset.validate` runs), collected instead of raised, plus
the repeats' mean.

Example
-------
>>> from core.data.check import check_subject, format_subject  # doctest: +SKIP
>>> print(format_subject(check_subject(Dataset("/data/ds003020"), "UTS01")))  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from core.cli import progress as print_progress
from core.cli import run
from core.data.audio import low_rate_warning
from core.data.dataset import PAPER_TEST, TR, Dataset
from core.errors import DataError

__all__ = ["REPEATS_TOLERANCE", "StoryCheck", "SubjectCheck", "check_subject", "repeats_mean_error",
           "format_subject", "main"]

REPEATS_TOLERANCE = 1e-5  # largest |data - mean(repeats)| / RMS(repeats) that is float32 rounding
_VOXEL_BLOCK = 4096  # voxel columns per read when comparing data with its repeats


@dataclass
class StoryCheck:
    """What :func:`check_subject` found for one story (``None``: could not be read)."""

    story: str
    rows: int | None = None
    voxels: int | None = None
    respdict: int | None = None
    audio_seconds: float | None = None
    audio_margin: float | None = None  # seconds the audio outlasts the last row's time
    repeats: int | None = None
    repeats_error: float | None = None  # see repeats_mean_error
    nan_voxels: int | None = None
    audio_rate: int | None = None  # Hz
    words: int | None = None  # spoken words of the TextGrid (Dataset.words)


@dataclass
class SubjectCheck:
    """A subject's stories, NaN voxels (any story), ROI masks (name -> size, None if unreadable),
    problems and warnings; ``transcripts``: whether the dataset has any TextGrid."""

    subject: str
    stories: list[StoryCheck] = field(default_factory=list)
    nan_voxels: int | None = None
    roi_sizes: dict[str, int | None] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    transcripts: bool = False


def repeats_mean_error(dataset: Dataset, subject: str, story: str) -> float:
    """How far the story's ``data`` is from the mean of its ``individual_repeats``.

    Reads blocks of ``_VOXEL_BLOCK`` voxel columns. A voxel that is NaN in ``data`` and in
    the mean counts as equal; NaN in only one of them as infinitely far.

    Returns
    -------
    error : float
        ``max |data - mean(repeats)|`` over rows and voxels, divided by the RMS of the
        finite repeat values; below :data:`REPEATS_TOLERANCE` is float32 rounding.
    """
    n_voxels = dataset.response_shape(subject, story)[1]
    largest, squares, count = 0.0, 0.0, 0
    for start in range(0, n_voxels, _VOXEL_BLOCK):
        block = slice(start, min(start + _VOXEL_BLOCK, n_voxels))
        repeats = dataset.repeats(subject, story, voxels=block)
        mean = repeats.mean(axis=0, dtype=np.float64)
        data = dataset.responses(subject, story, voxels=block)
        diff = np.abs(data - mean)
        both_nan = np.isnan(data) & np.isnan(mean)
        diff[np.isnan(diff) & ~both_nan] = np.inf
        diff[both_nan] = 0.0
        largest = max(largest, float(diff.max(initial=0.0)))
        finite = repeats[np.isfinite(repeats)].astype(np.float64)
        squares += float(finite @ finite)
        count += finite.size
    rms = np.sqrt(squares / count) if count else 0.0
    return largest / rms if rms > 0 else largest


def check_subject(dataset: Dataset, subject: str, progress: Callable[[str], None] = print_progress) -> SubjectCheck:
    """Check one subject's files; every problem becomes one line of ``problems``.

    Raises DataError only when the subject itself is unknown.
    """
    problems: dict[str, None] = {}  # ordered and without repeats: one file's error is one line

    def attempt(read, *args):
        try:
            return read(*args)
        except DataError as error:
            problems[str(error)] = None
            return None

    stories = dataset.stories(subject)
    result = SubjectCheck(subject)
    grids = dataset.textgrid_path(stories[0] if stories else "-").parent
    result.transcripts = grids.is_dir() and any(grids.glob("*.TextGrid"))
    if not result.transcripts:
        result.warnings.append(f"{grids}: no TextGrids; word-level studies (probes) cannot run")
    respdict = attempt(dataset.respdict) or {}
    any_nan = None
    for k, story in enumerate(stories):
        progress(f"[{k + 1}/{len(stories)}] {subject}/{story}")
        found = StoryCheck(story, respdict=respdict.get(story))
        result.stories.append(found)
        found.audio_rate = attempt(dataset.audio_rate, story)
        warning = found.audio_rate and low_rate_warning(dataset.audio_path(story), found.audio_rate)
        if warning:
            result.warnings.append(warning)
        if result.transcripts:
            found.words = attempt(dataset.check_transcript, story)
        shape = attempt(dataset.response_shape, subject, story)
        if shape is None:
            continue
        found.rows, found.voxels = shape
        attempt(dataset.n_trs, subject, story)
        found.audio_seconds = attempt(dataset.audio_duration, story)
        if found.audio_seconds is not None:
            found.audio_margin = dataset.audio_margin(subject, story)
            attempt(dataset.check_audio, subject, story)
        found.repeats = attempt(dataset.n_repeats, subject, story)
        if found.repeats:
            found.repeats_error = repeats_mean_error(dataset, subject, story)
            if not found.repeats_error <= REPEATS_TOLERANCE:
                problems[
                    f"{dataset.responses_path(subject, story)}: 'data' is not the mean of its "
                    f"{found.repeats} 'individual_repeats' (largest difference {found.repeats_error:.3g} "
                    f"of the repeats' RMS; float32 rounding stays below {REPEATS_TOLERANCE:g})"
                ] = None
        nan = attempt(dataset.nan_voxels, subject, [story])
        if nan is not None:
            found.nan_voxels = int(nan.sum())
            any_nan = nan if any_nan is None else any_nan | nan
    if any_nan is not None and all(s.nan_voxels is not None for s in result.stories):
        result.nan_voxels = int(any_nan.sum())
    # Checked against the voxel count of the readable files, so that a broken response
    # file does not hide intact masks.
    voxels = Counter(s.voxels for s in result.stories if s.voxels is not None).most_common(1)
    for name in attempt(dataset.roi_names, subject) or []:
        mask = attempt(dataset.roi_mask, subject, name, voxels[0][0]) if voxels else None
        result.roi_sizes[name] = None if mask is None else int(mask.sum())
    result.problems = list(problems)
    return result


def format_subject(check: SubjectCheck, test: tuple[str, ...] = PAPER_TEST) -> str:
    """The subject's table, ROI sizes and problem lines, as :func:`main` prints them."""
    voxels = sorted({s.voxels for s in check.stories if s.voxels is not None})
    tests = [s for s in check.stories if s.story in test]
    test_note = ", ".join(f"test story {s.story}: {s.repeats or 'no'} repeats" for s in tests)
    header = (f"{check.subject}: {len(check.stories)} stories, {_listing(voxels)} voxels, "
              f"{_or_unknown(check.nan_voxels)} NaN voxels in any story, "
              f"{test_note or 'no test story ' + _listing(test)}")
    columns = ["story", "rows", "voxels", "respdict", "audio s", "covers rows", "repeats", "mean = data", "NaN voxels",
               "words"]
    rows = [[
        s.story, _or_unknown(s.rows), _or_unknown(s.voxels), _respdict_cell(s), _number(s.audio_seconds, 1),
        _coverage_cell(s.audio_margin), _or_unknown(s.repeats) if s.repeats != 0 else "-",
        _mean_cell(s), _or_unknown(s.nan_voxels), _or_unknown(s.words) if check.transcripts else "-",
    ] for s in check.stories]
    lines = [header, *_table(columns, rows)]
    rois = ", ".join(f"{name} {_or_unknown(size)}" for name, size in check.roi_sizes.items())
    lines.append(f"ROI masks (voxels): {rois or 'none'}")
    lines += [f"warning: {w}" for w in check.warnings]
    lines += [f"problem: {p}" for p in check.problems] or ["no problems"]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.check", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="dataset root (ds003020 layout)")
    parser.add_argument("--subject", nargs="+", help="subjects to check (default: all)")
    parser.add_argument("--tr", type=float, default=TR,
                        help=f"seconds between volumes (default {TR}; the reference tooling uses 2.0)")
    args = parser.parse_args(argv)

    dataset = Dataset(args.data, tr=args.tr)
    n_problems = 0
    for subject in args.subject or dataset.subjects:
        check = check_subject(dataset, subject)
        print(format_subject(check), end="\n\n", flush=True)
        n_problems += len(check.problems)
    print(f"{n_problems} problem{'s' * (n_problems != 1)} found" if n_problems else "no problems found")
    return 1 if n_problems else 0


def _table(columns: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(cell)) for cell in column) for column in zip(columns, *rows)]
    return ["  ".join(str(cell).rjust(w) if i else str(cell).ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
            for row in [columns, *rows]]


def _respdict_cell(s: StoryCheck) -> str:
    if s.respdict is None:
        return "-"
    if s.rows is None:
        return str(s.respdict)
    offset = s.respdict - s.rows
    return f"{s.respdict} (rows{offset:+d})" if offset else f"{s.respdict} (rows)"


def _coverage_cell(margin: float | None) -> str:
    if margin is None:
        return "?"
    return f"{'yes' if margin >= 0 else 'no'} ({margin:+.1f} s)"


def _mean_cell(s: StoryCheck) -> str:
    if not s.repeats:
        return "-"
    return f"{'yes' if s.repeats_error <= REPEATS_TOLERANCE else 'no'} ({s.repeats_error:.1g})"


def _number(value: float | None, digits: int) -> str:
    return "?" if value is None else f"{value:.{digits}f}"


def _or_unknown(value) -> str:
    return "?" if value is None else str(value)


def _listing(values) -> str:
    return "/".join(map(str, values)) or "?"


if __name__ == "__main__":
    sys.exit(run(main))
