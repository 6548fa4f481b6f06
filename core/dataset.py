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
at 11.04725 s of audio. ``respdict.json`` holds the untrimmed count (rows + 15); a count
equal to the rows is accepted too.

Every problem with the files raises :class:`core.errors.DataError` with a one-line
message naming the file, the subject or story, and what was expected. docs/data.md
describes the layout, the ROI mask file and how to export it from pycortex.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from core.audio import SAMPLE_RATE, read_wav, resample, wav_duration, write_wav
from core.errors import DataError
from core.textgrid import Interval, read_textgrid, write_textgrid

__all__ = [
    "TR", "TRIM_START", "TRIM_END", "SOUND_START", "SAMPLE_RATE", "PAPER_TEST", "PAPER_VAL",
    "Interval", "Split", "Dataset",
    "write_wav", "write_responses", "write_roi_masks", "write_textgrid", "write_respdict",
]

TR = 2.0045  # seconds between fMRI volumes
TRIM_START = 10  # TRs removed from the start of each story's responses
TRIM_END = 5  # TRs removed from the end
SOUND_START = 10.0  # seconds from the scan's start to the audio's start
PAPER_TEST = ("wheretheressmoke",)
PAPER_VAL = ("fromboyhoodtofatherhood", "onapproachtopluto")

_MAX_AUDIO_SHORTFALL_TRS = 5  # validate(): audio may end this many TRs before the last TR
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
        Seconds between fMRI volumes.
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
            Mono (channels averaged), in [-1, 1], resampled to ``SAMPLE_RATE`` if needed.
        """
        audio, rate = read_wav(self._audio_file(story))
        return resample(audio, rate, SAMPLE_RATE)

    def audio_duration(self, story: str) -> float:
        """Length of the story's audio in seconds, read from the WAV header."""
        return wav_duration(self._audio_file(story))

    def words(self, story: str) -> list[Interval]:
        """Non-empty intervals of the TextGrid's word tier ("word" or "words", any case).

        Labels are stripped of surrounding whitespace; markers such as "sp" or "{LG}"
        are kept.
        """
        return self._tier(story, ("word", "words"))

    def phones(self, story: str) -> list[Interval]:
        """Non-empty intervals of the TextGrid's phone tier ("phone" or "phones", any case)."""
        return self._tier(story, ("phone", "phones"))

    # ---- responses ---------------------------------------------------------------------

    def n_trs(self, subject: str, story: str) -> int:
        """Rows of the subject's (trimmed) responses to the story.

        Raises DataError when ``respdict.json`` lists the story with a count that is
        neither the rows nor the rows plus ``trim_start + trim_end``.
        """
        path = self.responses_path(subject, story)
        with _open_hdf5(path) as f:
            n_trs = _data(f, path).shape[0]
        self._check_respdict(story, n_trs, path)
        return n_trs

    def n_voxels(self, subject: str) -> int:
        """Columns of the subject's response files, which must agree across stories.

        Raises
        ------
        DataError
            The subject has no response files, or one story's count differs from the
            most common one (the message names that story's file).
        """
        counts = {}
        for story in self.stories(subject):
            path = self.responses_path(subject, story)
            with _open_hdf5(path) as f:
                counts[path] = _data(f, path).shape[1]
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
        self, subject: str, story: str, voxels: np.ndarray | None = None
    ) -> np.ndarray:
        """The subject's responses to the story, read from disk in blocks of rows.

        Parameters
        ----------
        voxels : array of shape (n_voxels,) bool, or (n_selected,) int, optional
            Which voxel columns to return; all by default. Only these columns are kept
            in memory.

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
        self, subject: str, story: str, voxels: np.ndarray | None = None
    ) -> np.ndarray | None:
        """Single-repeat responses (for the noise ceiling), where the file has them.

        Parameters
        ----------
        voxels : array of shape (n_voxels,) bool, or (n_selected,) int, optional
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

    def tr_times(self, subject: str, story: str) -> np.ndarray:
        """Time of each response row on the audio file's clock (see the module docstring).

        Returns
        -------
        tr_times : array of shape (n_trs,), float64
            ``(i + trim_start) * tr + tr / 2 - sound_start`` for row ``i``, in seconds.
        """
        rows = np.arange(self.n_trs(subject, story), dtype=np.float64)
        return (rows + self.trim_start) * self.tr + self.tr / 2 - self.sound_start

    def nan_voxels(self, subject: str, stories: Sequence[str] | None = None) -> np.ndarray:
        """Voxels with a NaN anywhere in the given stories' responses (all stories by default).

        Each file is read once, in blocks of rows.

        Returns
        -------
        nan_voxels : array of shape (n_voxels,), bool
        """
        has_nan = np.zeros(self.n_voxels(subject), dtype=bool)
        for story in self.stories(subject) if stories is None else stories:
            path = self.responses_path(subject, story)
            with _open_hdf5(path) as f:
                for _, block in _row_blocks(_data(f, path)):
                    has_nan |= np.isnan(block).any(axis=0)
        return has_nan

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
        path = self.roi_path(subject)
        if not path.exists():
            self.stories(subject)  # an unknown subject is still an error
            return {}
        n_voxels = self.n_voxels(subject)
        with _open_hdf5(path) as f:
            return {
                name: _roi_mask(item, name, n_voxels, subject, path) for name, item in f.items()
            }

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
        TR time, and the ROI masks have one value per voxel.
        """
        self.n_voxels(subject)
        for story in self.stories(subject):
            path = self.responses_path(subject, story)
            with _open_hdf5(path) as f:
                _repeats(f, path)
            last_tr = self.tr_times(subject, story)[-1]
            needed = last_tr - _MAX_AUDIO_SHORTFALL_TRS * self.tr
            duration = self.audio_duration(story)
            if duration < needed:
                raise DataError(
                    f"{self.audio_path(story)}: {duration:.2f} s of audio, but {subject}/{story} "
                    f"has a TR at {last_tr:.2f} s, so at least {needed:.2f} s were expected "
                    f"(tr={self.tr}, sound_start={self.sound_start}, trim_start={self.trim_start})"
                )
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

    def _check_respdict(self, story: str, n_trs: int, path: Path) -> None:
        counts = self._respdict()
        untrimmed = n_trs + self.trim_start + self.trim_end
        if story in counts and counts[story] not in (n_trs, untrimmed):
            raise DataError(
                f"{self._respdict_path}: {story!r} has {counts[story]} TRs, but {path} has "
                f"{n_trs} rows (expected {untrimmed} untrimmed or {n_trs} trimmed)"
            )

    def _respdict(self) -> dict[str, int]:
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


def _voxel_index(voxels: np.ndarray | None, n_voxels: int, path: Path) -> np.ndarray | slice:
    """A column index for ``voxels`` (bool mask or int indices), checked against n_voxels."""
    if voxels is None:
        return slice(None)
    voxels = np.asarray(voxels)
    if voxels.dtype == bool:
        if voxels.shape != (n_voxels,):
            raise DataError(
                f"{path}: voxel mask has shape {voxels.shape}, expected ({n_voxels},)"
            )
        return np.flatnonzero(voxels)
    if not np.issubdtype(voxels.dtype, np.integer) or voxels.ndim != 1:
        raise DataError(
            f"{path}: voxels must be a bool mask or 1-D int indices, "
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

    Response files are stored row by row, so every row must be read either way; reading
    blocks of rows and keeping only the selected columns bounds the memory to the output
    plus one block (h5py's own fancy indexing is slow for thousands of columns).
    """
    n_voxels = dataset.shape[-1]
    n_selected = len(range(n_voxels)[columns]) if isinstance(columns, slice) else len(columns)
    out = np.empty(dataset.shape[:-1] + (n_selected,), dtype=np.float32)
    for index, block in _row_blocks(dataset):
        out[index] = block[..., columns]
    return out


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
