"""The ds003020 dataset on disk: audio, fMRI responses, transcripts, ROI masks, splits.

Layout (``root`` is the dataset folder)::

    stimuli/<story>.wav                                  audio, any rate, mono or stereo
    derivative/preprocessed_data/<SUBJECT>/<story>.hf5   `data` (n_trs, n_voxels) float,
                                                         optional `individual_repeats`
                                                         (n_repeats, n_trs, n_voxels)
    derivative/TextGrids/<story>.TextGrid                Praat; "word" and "phone" tiers
    derivative/respdict.json                             {story: TR count}, optional
    derivative/rois/<SUBJECT>.hf5                        one bool (n_voxels,) per ROI, optional

Time convention
---------------
The scanner acquires untrimmed TR ``j`` at ``j * tr + tr / 2`` seconds after the scan
starts, and the audio starts ``sound_start`` seconds (10 s) after the scan. Response rows
are already trimmed: ``trim_start`` (10) TRs off the start and ``trim_end`` (5) off the
end, so row ``i`` is untrimmed TR ``i + trim_start``, at

    ``(i + trim_start) * tr + tr / 2 - sound_start``

seconds on the audio file's clock (:meth:`Dataset.tr_times`). With the defaults, row 0 is
at 11.04725 s of audio. ``tr`` defaults to the scanner's 2.0045 s; the reference tooling
uses 2.0 s (``Dataset(root, tr=2.0)``), which puts row ``i`` ``(i + 10) * 0.0045 + 0.00225``
s earlier (1.397 s at row 300).

respdict.json
-------------
ds003020's ``respdict.json`` holds rows + 20 per story. The reference tooling
(``load_simulated_trfiles(respdict, start_time=10, pad=5)``) simulates respdict - 5 TRs
(``RESPDICT_PAD``), and ``apply_zscore_and_hrf`` cuts ``[5 + 5:-5]`` of them, i.e.
``trim_start`` (10) and ``trim_end`` (5), so

    ``respdict = rows + trim_start + trim_end + RESPDICT_PAD = rows + 20``.

A count equal to the rows (a trimmed respdict) is accepted too; any other count is an
error.

Every problem with the files raises :class:`core.errors.DataError` with a one-line
message naming the file, the subject or story, and what was expected. docs/data.md
describes the layout, the ROI mask file and how to export it from pycortex.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from core.cache import cache_root
from core.data.audio import SAMPLE_RATE, low_rate_warning, read_wav, resample, wav_duration, wav_rate, write_wav
from core.data.textgrid import Interval, read_textgrid, write_textgrid
from core.errors import DataError
from core.outputs import atomic_write

__all__ = [
    "TR", "TRIM_START", "TRIM_END", "RESPDICT_PAD", "SOUND_START", "SAMPLE_RATE",
    "PAPER_TEST", "PAPER_VAL", "NON_SPEECH", "Interval", "is_marker", "Split", "Dataset",
    "write_wav", "write_responses", "write_roi_masks", "write_textgrid", "write_respdict",
]

TR = 2.0045  # seconds between fMRI volumes
TRIM_START = 10  # TRs removed from the start of each story's responses
TRIM_END = 5  # TRs removed from the end
RESPDICT_PAD = 5  # TRs at the end of respdict's count that the reference tooling never simulates
SOUND_START = 10.0  # seconds from the scan's start to the audio's start
PAPER_TEST = ("wheretheressmoke",)
PAPER_VAL = ("fromboyhoodtofatherhood", "onapproachtopluto")
# Word-tier labels that are not words (silence, breath, laughter, noise, sentence marks), as
# the reference's dsutils.make_word_ds drops them; compared by is_marker().
NON_SPEECH = frozenset({"sentence_start", "sentence_end", "br", "lg", "ls", "ns", "sp"})

_MAX_AUDIO_SHORTFALL_TRS = 5  # check_audio(): audio may end this many TRs before the last TR
_WORD_TOLERANCE_S = 0.1  # check_transcript(): words may end this much after the audio (rounding)
_ROW_BLOCK = 64  # rows per HDF5 read when selecting voxels: bounds the temporary copy


@dataclass(frozen=True)
class Split:
    """Story names of each part of a train / validation / test split."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]


class Dataset:
    """Read a dataset in the ds003020 layout (see the module docstring).

    Parameters
    ----------
    root : str or Path
        The dataset folder, holding ``stimuli/`` and ``derivative/preprocessed_data/``.
    tr : float, default TR
        Seconds between fMRI volumes: the scanner's 2.0045 s, or 2.0 to reproduce the
        reference tooling's grid (1.4 s earlier by row 300; see the module docstring).
    sound_start : float, default SOUND_START
        Seconds from the scan's start to the audio's start.
    trim_start, trim_end : int, default TRIM_START, TRIM_END
        TRs already removed from the start and end of each response file.

    Raises
    ------
    DataError
        ``root``, its ``stimuli/`` or its ``derivative/preprocessed_data/`` is missing.

    Example
    -------
    >>> ds = Dataset("/data/ds003020")  # doctest: +SKIP
    >>> ds.validate("UTS01")  # doctest: +SKIP
    >>> story = ds.split("UTS01").test[0]  # doctest: +SKIP
    >>> ac = ds.roi_masks("UTS01")["AC"]  # doctest: +SKIP
    >>> Y = ds.responses("UTS01", story, voxels=ac)  # doctest: +SKIP
    >>> Y.shape == (len(ds.tr_times("UTS01", story)), ac.sum())  # doctest: +SKIP
    True
    """

    def __init__(
        self,
        root: str | Path,
        *,
        tr: float = TR,
        sound_start: float = SOUND_START,
        trim_start: int = TRIM_START,
        trim_end: int = TRIM_END,
    ):
        self.root = Path(root)
        self.tr = float(tr)
        self.sound_start = float(sound_start)
        self.trim_start = int(trim_start)
        self.trim_end = int(trim_end)
        for folder in (self.root, self._stimuli_dir, self._responses_dir):
            if not folder.is_dir():
                raise DataError(
                    f"{folder}: folder not found; expected the ds003020 layout "
                    "(stimuli/<story>.wav, derivative/preprocessed_data/<SUBJECT>/<story>.hf5)"
                )

    # ---- paths -------------------------------------------------------------------------

    @property
    def _stimuli_dir(self) -> Path:
        return self.root / "stimuli"

    @property
    def _responses_dir(self) -> Path:
        return self.root / "derivative" / "preprocessed_data"

    @property
    def _respdict_path(self) -> Path:
        return self.root / "derivative" / "respdict.json"

    def audio_path(self, story: str) -> Path:
        """Where the story's audio is expected: ``stimuli/<story>.wav``."""
        return self._stimuli_dir / f"{story}.wav"

    def textgrid_path(self, story: str) -> Path:
        """Where the story's transcript is expected: ``derivative/TextGrids/<story>.TextGrid``."""
        return self.root / "derivative" / "TextGrids" / f"{story}.TextGrid"

    def roi_path(self, subject: str) -> Path:
        """Where the subject's ROI masks are expected: ``derivative/rois/<SUBJECT>.hf5``."""
        return self.root / "derivative" / "rois" / f"{subject}.hf5"

    def responses_path(self, subject: str, story: str) -> Path:
        """The subject's response file for the story; DataError if either is unknown."""
        if story not in self.stories(subject):
            raise DataError(
                f"{self._responses_dir / subject}: no story {story!r} for {subject}; "
                f"its stories: {_listing(self.stories(subject))}"
            )
        return self._responses_dir / subject / f"{story}.hf5"

    # ---- listing -----------------------------------------------------------------------

    @property
    def subjects(self) -> list[str]:
        """Sorted subject folders of ``derivative/preprocessed_data/``."""
        folders = self._responses_dir.iterdir()
        return sorted(p.name for p in folders if p.is_dir() and not p.name.startswith("."))

    def stories(self, subject: str) -> list[str]:
        """Sorted stories that have a response file for the subject."""
        if subject not in self.subjects:
            raise DataError(
                f"{self._responses_dir}: no subject {subject!r}; "
                f"known subjects: {_listing(self.subjects)}"
            )
        # Dot-files are skipped: macOS copies leave unreadable "._<story>.hf5" beside each file.
        files = (self._responses_dir / subject).glob("*.hf5")
        return sorted(p.stem for p in files if not p.name.startswith("."))

    # ---- audio and transcripts ---------------------------------------------------------

    def audio(self, story: str) -> np.ndarray:
        """The story's audio at 16 kHz.

        Returns
        -------
        audio : array of shape (n_samples,), float32
            Mono (channels averaged), in [-1, 1], resampled to ``SAMPLE_RATE`` if needed
            (with a warning when the file's rate is lower: :func:`core.data.audio.low_rate_warning`).
        """
        path = self._audio_file(story)
        audio, rate = read_wav(path)
        warning = low_rate_warning(path, rate)
        if warning:
            warnings.warn(warning, stacklevel=2)
        return resample(audio, rate, SAMPLE_RATE)

    def audio_duration(self, story: str) -> float:
        """Length of the story's audio in seconds, read from the WAV header."""
        return wav_duration(self._audio_file(story))

    def audio_rate(self, story: str) -> int:
        """The story's audio file's sample rate in Hz, read from the WAV header."""
        return wav_rate(self._audio_file(story))

    def words(self, story: str, markers: bool = False) -> list[Interval]:
        """The spoken words: intervals of the TextGrid's word tier ("word" or "words", any case).

        As the reference (Huth lab ``dsutils.make_word_ds``) keeps them: labels stripped of
        surrounding whitespace, empty ones dropped, and non-speech markers (``sp``,
        ``{LG}``, ``{NS}``, ``{BR}``, ``{LS}``, ``sentence_start``, ``sentence_end``: see
        :func:`is_marker`) dropped unless ``markers=True``. Labels keep their case (UPPER
        in ds003020). The raw tiers, empty intervals included, are
        ``core.data.textgrid.read_textgrid(dataset.textgrid_path(story))``.

        Parameters
        ----------
        markers : bool, default False
            Keep the non-speech markers too (every non-empty interval of the tier).

        Returns
        -------
        words : list of Interval
            In file order; times in seconds on the audio file's clock.
        """
        intervals = self._tier(story, ("word", "words"))
        return intervals if markers else [w for w in intervals if not is_marker(w.label)]

    def check_transcript(self, story: str) -> int:
        """Check the story's TextGrid: it reads, has a word tier, and its words lie inside the audio.

        Returns
        -------
        n_words : int
            How many spoken words (:meth:`words`) it holds.

        Raises
        ------
        DataError
            The TextGrid or the audio is missing or unreadable, the word tier is missing,
            or a word (marker included) starts before 0 s or ends more than 0.1 s after
            the audio's end.
        """
        intervals = self.words(story, markers=True)
        duration = self.audio_duration(story)
        outside = [w for w in intervals if w.start < 0 or w.end > duration + _WORD_TOLERANCE_S]
        if outside:
            first = outside[0]
            raise DataError(
                f"{self.textgrid_path(story)}: {len(outside)} words of story {story!r} lie outside its "
                f"{duration:.2f} s of audio ({self.audio_path(story)}), the first {first.label!r} at "
                f"{first.start:.2f}-{first.end:.2f} s: a TextGrid of another story or a cut audio file?"
            )
        return sum(not is_marker(w.label) for w in intervals)

    def check_transcripts(self, stories: Sequence[str], why: str) -> None:
        """Raise one DataError naming every story whose TextGrid is missing or unreadable.

        ``why`` says what needs them (e.g. ``"probes"``); each story's problem follows.
        """
        problems = {}
        for story in dict.fromkeys(stories):
            try:
                self.words(story)
            except DataError as error:
                problems[story] = str(error)
        if problems:
            raise DataError(
                f"{why} need the transcripts of {len(problems)} {'story' if len(problems) == 1 else 'stories'} "
                "without a readable one "
                f"({_listing(problems)}): " + "; ".join(problems.values())
            )

    def phones(self, story: str) -> list[Interval]:
        """Non-empty intervals of the TextGrid's phone tier ("phone" or "phones", any case)."""
        return self._tier(story, ("phone", "phones"))

    # ---- responses ---------------------------------------------------------------------

    def response_shape(self, subject: str, story: str) -> tuple[int, int]:
        """``(n_trs, n_voxels)`` of the subject's response file for the story (header only)."""
        path = self.responses_path(subject, story)
        with _open_hdf5(path) as f:
            return _data(f, path).shape

    def respdict(self) -> dict[str, int]:
        """``derivative/respdict.json`` as {story: TR count}; {} when the file is absent."""
        path = self._respdict_path
        if not path.exists():
            return {}
        try:
            counts = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{path}: not a readable JSON file ({_one_line(e)})") from None
        if not isinstance(counts, dict) or not all(
            isinstance(n, int) and not isinstance(n, bool) for n in counts.values()
        ):
            raise DataError(f"{path}: expected an object mapping story names to TR counts")
        return counts

    def respdict_count(self, n_trs: int) -> int:
        """The count ds003020's respdict.json holds for a story of ``n_trs`` rows.

        ``n_trs + trim_start + trim_end + RESPDICT_PAD`` (rows + 20 with the defaults; see
        the module docstring).
        """
        return n_trs + self.trim_start + self.trim_end + RESPDICT_PAD

    def n_trs(self, subject: str, story: str) -> int:
        """Rows of the subject's (trimmed) responses to the story.

        Raises DataError when ``respdict.json`` lists the story with a count that is
        neither :meth:`respdict_count` (rows + 20 with the defaults) nor the rows.
        """
        n_trs = self.response_shape(subject, story)[0]
        listed = self.respdict().get(story)
        expected = self.respdict_count(n_trs)
        if listed is not None and listed not in (expected, n_trs):
            raise DataError(
                f"{self._respdict_path}: {story!r} has {listed} TRs, but "
                f"{self.responses_path(subject, story)} has {n_trs} rows; expected {expected} "
                f"(rows + trim_start {self.trim_start} + trim_end {self.trim_end} + the "
                f"reference's pad {RESPDICT_PAD}) or {n_trs} (rows)"
            )
        return n_trs

    def n_voxels(self, subject: str) -> int:
        """Columns of the subject's response files, which must agree across stories.

        Raises
        ------
        DataError
            The subject has no response files, or one story's count differs from the
            most common one (the message names that story's file).
        """
        counts = {
            self.responses_path(subject, story): self.response_shape(subject, story)[1]
            for story in self.stories(subject)
        }
        if not counts:
            raise DataError(
                f"{self._responses_dir / subject}: no .hf5 response files for {subject}"
            )
        usual = Counter(counts.values()).most_common(1)[0][0]
        for path, n in counts.items():
            if n != usual:
                raise DataError(f"{path}: {n} voxels, but {subject}'s other stories have {usual}")
        return usual

    def responses(
        self, subject: str, story: str, voxels: np.ndarray | slice | None = None
    ) -> np.ndarray:
        """The subject's responses to the story.

        Parameters
        ----------
        voxels : slice, or array of shape (n_voxels,) bool, or (n_selected,) int, optional
            Which voxel columns to return; all by default. A slice (step 1) is read as one
            HDF5 hyperslab ``data[:, a:b]``, so streaming voxel blocks never reads whole
            rows; masks and indices are read in blocks of rows, keeping only the selected
            columns. Either way only the returned columns are held in memory.

        Returns
        -------
        responses : array of shape (n_trs, n_voxels) or (n_trs, n_selected), float32
            May contain NaN voxels.
        """
        path = self.responses_path(subject, story)
        with _open_hdf5(path) as f:
            data = _data(f, path)
            return _read_voxels(data, _voxel_index(voxels, data.shape[1], path))

    def repeats(
        self, subject: str, story: str, voxels: np.ndarray | slice | None = None
    ) -> np.ndarray | None:
        """Single-repeat responses (for the noise ceiling), where the file has them.

        Parameters
        ----------
        voxels : slice, or array of shape (n_voxels,) bool, or (n_selected,) int, optional
            As in :meth:`responses`.

        Returns
        -------
        repeats : array of shape (n_repeats, n_trs, n_voxels or n_selected), float32, or None
            ``None`` when the file has no ``individual_repeats``.
        """
        path = self.responses_path(subject, story)
        with _open_hdf5(path) as f:
            repeats = _repeats(f, path)
            if repeats is None:
                return None
            return _read_voxels(repeats, _voxel_index(voxels, repeats.shape[2], path))

    def n_repeats(self, subject: str, story: str) -> int:
        """How many single repeats the story's response file holds (0 without any)."""
        path = self.responses_path(subject, story)
        with _open_hdf5(path) as f:
            repeats = _repeats(f, path)
            return 0 if repeats is None else repeats.shape[0]

    def tr_times(self, subject: str, story: str) -> np.ndarray:
        """Time of each response row on the audio file's clock (see the module docstring).

        Returns
        -------
        tr_times : array of shape (n_trs,), float64
            ``(i + trim_start) * tr + tr / 2 - sound_start`` for row ``i``, in seconds.
        """
        return self._row_times(self.n_trs(subject, story))

    def audio_margin(self, subject: str, story: str) -> float:
        """Seconds by which the story's audio outlasts its last response row's time.

        Negative when the sound ends before the last row, so that the rows after its end
        have no sound of their own. Counts the rows from the response file alone, so it
        works whether or not respdict.json agrees.
        """
        duration, last_row = self._audio_and_last_row(subject, story)
        return duration - last_row

    def check_audio(self, subject: str, story: str) -> None:
        """Raise DataError when the audio ends more than 5 TRs before the last row's time.

        Features at a row read the sound up to ``max(delays)`` (4) TRs earlier, so a
        sound ending a few TRs before the last row still feeds every row; a larger gap
        means a wrong TR, trim or sound start, or a truncated file.
        """
        duration, last_row = self._audio_and_last_row(subject, story)
        needed = last_row - _MAX_AUDIO_SHORTFALL_TRS * self.tr
        if duration < needed:
            raise DataError(
                f"{self.audio_path(story)}: {duration:.2f} s of audio, but {subject}/{story} "
                f"has a TR at {last_row:.2f} s, so at least {needed:.2f} s were expected "
                f"(tr={self.tr}, sound_start={self.sound_start}, trim_start={self.trim_start})"
            )

    def nan_voxels(self, subject: str, stories: Sequence[str] | None = None) -> np.ndarray:
        """Voxels with a NaN anywhere in the given stories' responses (all stories by default).

        Each file's own mask is cached under ``$BRAINSWEEP_CACHE/nan_voxels`` (default
        ``~/.cache/brainsweep``), keyed by the file's resolved path, size and modification
        time: a file is read in full (in blocks of rows) only the first time and after it
        changes.

        Returns
        -------
        nan_voxels : array of shape (n_voxels,), bool
        """
        has_nan = np.zeros(self.n_voxels(subject), dtype=bool)
        for story in self.stories(subject) if stories is None else stories:
            has_nan |= _cached_nan_mask(self.responses_path(subject, story))
        return has_nan

    def roi_names(self, subject: str) -> list[str]:
        """Names of the subject's ROI masks in ``derivative/rois/<SUBJECT>.hf5`` ([] if absent)."""
        path = self.roi_path(subject)
        if not path.exists():
            self.stories(subject)  # an unknown subject is still an error
            return []
        with _open_hdf5(path) as f:
            return list(f)

    def roi_mask(self, subject: str, name: str, n_voxels: int | None = None) -> np.ndarray:
        """One of the subject's ROI masks, checked as in :meth:`roi_masks`.

        Parameters
        ----------
        n_voxels : int, optional
            The voxel count to check the mask against; by default :meth:`n_voxels`, which
            fails when any response file does (``core.data.check`` passes the count it found).

        Returns
        -------
        roi_mask : array of shape (n_voxels,), bool
        """
        if name not in self.roi_names(subject):
            raise DataError(
                f"{self.roi_path(subject)}: no ROI {name!r} for {subject}; "
                f"its ROIs: {_listing(self.roi_names(subject))}"
            )
        path = self.roi_path(subject)
        with _open_hdf5(path) as f:
            n_voxels = self.n_voxels(subject) if n_voxels is None else n_voxels
            return _roi_mask(f[name], name, n_voxels, subject, path)

    def roi_masks(self, subject: str) -> dict[str, np.ndarray]:
        """The subject's ROI masks from ``derivative/rois/<SUBJECT>.hf5`` ({} if absent).

        Returns
        -------
        roi_masks : dict of str to array of shape (n_voxels,), bool
            ROI name -> which response columns belong to it.

        Raises
        ------
        DataError
            An entry is not a 1-D dataset of length n_voxels holding booleans or 0/1
            integers.
        """
        names = self.roi_names(subject)
        if not names:
            return {}
        n_voxels = self.n_voxels(subject)
        path = self.roi_path(subject)
        with _open_hdf5(path) as f:
            return {name: _roi_mask(f[name], name, n_voxels, subject, path) for name in names}

    # ---- splits and checks -------------------------------------------------------------

    def split(
        self,
        subject: str,
        test: str | Sequence[str] | None = None,
        val: str | Sequence[str] | None = None,
    ) -> Split:
        """Train / validation / test stories for a subject.

        Parameters
        ----------
        test, val : str or sequence of str, optional
            Story names; default the paper's (``PAPER_TEST``, ``PAPER_VAL``). ``val=()``
            gives no validation stories.

        Returns
        -------
        Split
            ``train`` is every other story of the subject, sorted.

        Raises
        ------
        DataError
            A default story is missing for this subject (pass ``test=``/``val=``), a
            given story is unknown, test and val overlap, or no training story is left.
        """
        available = self.stories(subject)
        test = self._split_part(subject, available, test, PAPER_TEST, "test")
        val = self._split_part(subject, available, val, PAPER_VAL, "val")
        both = sorted(set(test) & set(val))
        if both:
            raise DataError(
                f"{self._responses_dir / subject}: {_listing(both)} in both test= and val="
            )
        train = tuple(s for s in available if s not in test and s not in val)
        if not train:
            raise DataError(
                f"{self._responses_dir / subject}: no training stories left for {subject} "
                f"after test={test} and val={val}"
            )
        return Split(train=train, val=val, test=test)

    def validate(self, subject: str) -> None:
        """Check everything a run needs for one subject; raise DataError on the first problem.

        Checks that every response file opens and has a 2-D ``data`` (and well-shaped
        ``individual_repeats`` if present), voxel counts agree, ``respdict.json`` agrees
        with the rows, every story has audio lasting until at least 5 TRs before its last
        TR time (:meth:`check_audio`), and the ROI masks have one value per voxel. Reads
        file headers only; ``python -m core.check`` also reads the data and reports every
        problem at once.
        """
        self.n_voxels(subject)
        for story in self.stories(subject):
            self.n_repeats(subject, story)
            self.n_trs(subject, story)
            self.check_audio(subject, story)
        self.roi_masks(subject)

    # ---- helpers -----------------------------------------------------------------------

    def _audio_file(self, story: str) -> Path:
        path = self.audio_path(story)
        if not path.is_file():
            raise DataError(f"{path}: audio for story {story!r} not found")
        return path

    def _tier(self, story: str, names: tuple[str, str]) -> list[Interval]:
        path = self.textgrid_path(story)
        if not path.is_file():
            raise DataError(f"{path}: TextGrid for story {story!r} not found")
        tiers = read_textgrid(path)
        for name, intervals in tiers.items():
            if name.strip().lower() in names:
                return [
                    Interval(start, end, label.strip())
                    for start, end, label in intervals
                    if label.strip()
                ]
        raise DataError(
            f"{path}: no tier named {names[0]!r} or {names[1]!r} (any case) for story {story!r}; "
            f"found tiers: {_listing(tiers)}"
        )

    def _row_times(self, n_trs: int) -> np.ndarray:
        rows = np.arange(n_trs, dtype=np.float64)
        return (rows + self.trim_start) * self.tr + self.tr / 2 - self.sound_start

    def _audio_and_last_row(self, subject: str, story: str) -> tuple[float, float]:
        """The audio's duration and the last response row's time, in seconds."""
        last_row = self._row_times(self.response_shape(subject, story)[0])[-1]
        return self.audio_duration(story), float(last_row)

    def _split_part(
        self,
        subject: str,
        available: list[str],
        given: str | Sequence[str] | None,
        paper: tuple[str, ...],
        part: str,
    ) -> tuple[str, ...]:
        folder = self._responses_dir / subject
        if given is None:
            missing = [s for s in paper if s not in available]
            if missing:
                raise DataError(
                    f"{folder}: {subject} lacks the paper's {part} stories {_listing(missing)}; "
                    f"pass {part}=(...) explicitly, choosing from: {_listing(available)}"
                )
            return paper
        names = (given,) if isinstance(given, str) else tuple(given)
        unknown = [s for s in names if s not in available]
        if unknown:
            raise DataError(
                f"{folder}: {part} stories {_listing(map(repr, unknown))} not found for {subject}; "
                f"available: {_listing(available)}"
            )
        return names


def is_marker(label: str) -> bool:
    """Whether a word-tier label is a non-speech marker (:data:`NON_SPEECH`), not a word.

    Compared as the reference does: lower-cased, braces and spaces stripped, so ``{LG}``,
    ``sp`` and ``SENTENCE_START`` are markers.
    """
    return label.strip().lower().strip("{}").strip() in NON_SPEECH


def write_responses(path: str | Path, data: np.ndarray, repeats: np.ndarray | None = None) -> None:
    """Write one story's responses in the ds003020 format.

    Parameters
    ----------
    path : str or Path
        ``derivative/preprocessed_data/<SUBJECT>/<story>.hf5``; parent folders are created.
    data : array of shape (n_trs, n_voxels)
        Stored as float32 dataset ``data``.
    repeats : array of shape (n_repeats, n_trs, n_voxels), optional
        Stored as float32 dataset ``individual_repeats``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=np.asarray(data, dtype=np.float32))
        if repeats is not None:
            f.create_dataset("individual_repeats", data=np.asarray(repeats, dtype=np.float32))


def write_roi_masks(path: str | Path, masks: dict[str, np.ndarray]) -> None:
    """Write a subject's ROI mask file: one bool dataset of shape (n_voxels,) per ROI.

    Parameters
    ----------
    path : str or Path
        ``derivative/rois/<SUBJECT>.hf5``; parent folders are created.
    masks : dict of str to array of shape (n_voxels,)
        ROI name -> mask over the response files' voxel columns.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for name, mask in masks.items():
            f.create_dataset(name, data=np.asarray(mask, dtype=bool))


def write_respdict(path: str | Path, counts: dict[str, int]) -> None:
    """Write ``derivative/respdict.json`` (story -> TR count); parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({s: int(n) for s, n in sorted(counts.items())}, indent=1) + "\n")


@contextmanager
def _open_hdf5(path: Path) -> Iterator[h5py.File]:
    """Open read-only; h5py's OSErrors (missing, corrupt, truncated) become DataErrors."""
    try:
        with h5py.File(path, "r") as f:
            yield f
    except OSError as e:
        raise DataError(f"{path}: not a readable HDF5 file ({_one_line(e)})") from None


def _data(f: h5py.File, path: Path) -> h5py.Dataset:
    data = f.get("data")
    if not isinstance(data, h5py.Dataset):
        raise DataError(f"{path}: no 'data' dataset; found: {_listing(f)}")
    if data.ndim != 2 or 0 in data.shape:
        raise DataError(f"{path}: 'data' has shape {data.shape}, expected (n_trs, n_voxels)")
    return data


def _repeats(f: h5py.File, path: Path) -> h5py.Dataset | None:
    repeats = f.get("individual_repeats")
    if repeats is None:
        return None
    shape = _data(f, path).shape
    if not isinstance(repeats, h5py.Dataset) or repeats.shape[1:] != shape or repeats.ndim != 3:
        raise DataError(
            f"{path}: 'individual_repeats' has shape {getattr(repeats, 'shape', None)}, "
            f"expected (n_repeats, {shape[0]}, {shape[1]}) to match 'data'"
        )
    return repeats


def _voxel_index(
    voxels: np.ndarray | slice | None, n_voxels: int, path: Path
) -> np.ndarray | slice:
    """A column index for ``voxels``, checked against n_voxels.

    ``None`` and slices become a ``slice(start, stop)`` with ``0 <= start <= stop <=
    n_voxels`` (slices clip as in numpy); bool masks become int indices.
    """
    if voxels is None:
        return slice(0, n_voxels)
    if isinstance(voxels, slice):
        start, stop, step = voxels.indices(n_voxels)
        if step != 1:
            raise DataError(
                f"{path}: voxel slice {voxels} has step {step}; slices must be contiguous "
                "(pass int indices for other selections)"
            )
        return slice(start, max(start, stop))
    voxels = np.asarray(voxels)
    if voxels.dtype == bool:
        if voxels.shape != (n_voxels,):
            raise DataError(
                f"{path}: voxel mask has shape {voxels.shape}, expected ({n_voxels},)"
            )
        return np.flatnonzero(voxels)
    if not np.issubdtype(voxels.dtype, np.integer) or voxels.ndim != 1:
        raise DataError(
            f"{path}: voxels must be a slice, a bool mask or 1-D int indices, "
            f"found {voxels.dtype} of shape {voxels.shape}"
        )
    if voxels.size and (voxels.min() < -n_voxels or voxels.max() >= n_voxels):
        raise DataError(
            f"{path}: voxel indices span [{voxels.min()}, {voxels.max()}], "
            f"but the file has {n_voxels} voxels"
        )
    return voxels


def _row_blocks(dataset: h5py.Dataset) -> Iterator[tuple[tuple, np.ndarray]]:
    """Read ``dataset`` of shape (..., n_trs, n_voxels) in blocks of rows.

    Yields ``(index, block)``: ``block = dataset[index]`` of shape (<= _ROW_BLOCK, n_voxels).
    """
    for leading in np.ndindex(*dataset.shape[:-2]):
        for start in range(0, dataset.shape[-2], _ROW_BLOCK):
            index = leading + (slice(start, start + _ROW_BLOCK),)
            yield index, dataset[index]


def _read_voxels(dataset: h5py.Dataset, columns: np.ndarray | slice) -> np.ndarray:
    """Columns of ``dataset`` (..., n_trs, n_voxels) as float32 (..., n_trs, n_selected).

    A contiguous slice is one hyperslab that HDF5 reads and converts to float32 straight
    into the output. Scattered columns are gathered from blocks of rows, which bounds the
    memory to the output plus one block (h5py's own fancy indexing is slow for thousands
    of columns).
    """
    if isinstance(columns, slice):
        out = np.empty(dataset.shape[:-1] + (columns.stop - columns.start,), dtype=np.float32)
        if out.size:
            dataset.read_direct(out, np.s_[..., columns])
        return out
    out = np.empty(dataset.shape[:-1] + (len(columns),), dtype=np.float32)
    for index, block in _row_blocks(dataset):
        out[index] = block[..., columns]
    return out


def _cached_nan_mask(path: Path) -> np.ndarray:
    """Which columns of one response file's ``data`` hold a NaN: (n_voxels,) bool.

    Cached as ``nan_voxels/<key>.npy`` under :func:`core.cache.cache_root`, the key
    hashing the file's resolved path, size and modification time (ns), so a changed file
    is read again. Written atomically; a cache that cannot be written only costs a re-read.
    """
    stat = path.stat()
    key = json.dumps([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    cached = cache_root() / "nan_voxels" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.npy"
    with _open_hdf5(path) as f:
        data = _data(f, path)
        if cached.is_file():
            try:
                mask = np.load(cached)
            except (OSError, ValueError):
                mask = None
            if mask is not None and mask.dtype == bool and mask.shape == (data.shape[1],):
                return mask
        mask = np.zeros(data.shape[1], dtype=bool)
        for _, block in _row_blocks(data):
            mask |= np.isnan(block).any(axis=0)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as out:
            np.save(out, mask)

    try:
        atomic_write(cached, write)
    except OSError:
        pass
    return mask


def _roi_mask(
    item: h5py.Dataset | h5py.Group, name: str, n_voxels: int, subject: str, path: Path
) -> np.ndarray:
    if not isinstance(item, h5py.Dataset) or item.shape != (n_voxels,):
        raise DataError(
            f"{path}: ROI {name!r} has shape {getattr(item, 'shape', 'group')}, "
            f"expected ({n_voxels},), one value per voxel of {subject}"
        )
    values = item[()]
    if values.dtype == bool:
        return values
    if np.issubdtype(values.dtype, np.integer) and np.isin(values, (0, 1)).all():
        return values.astype(bool)
    raise DataError(
        f"{path}: ROI {name!r} holds {values.dtype} values, expected booleans or 0/1 integers"
    )


def _listing(names) -> str:
    return ", ".join(map(str, names)) or "none"


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())
