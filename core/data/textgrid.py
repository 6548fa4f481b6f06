"""Praat TextGrid files: read Praat's three text formats, write the long one.

The long and short text formats hold the same sequence of numbers and quoted strings; the
long format only adds labels (``xmin =``, ``intervals [3]:``) around them. So the reader
tokenises the file into numbers, strings and ``<exists>``/``<absent>`` flags, drops
everything else (``!`` comments included), and reads the values in their fixed order. That
one path parses both formats.

The chronological text format (``"Praat chronological TextGrid text file"``, that of
ds003020's legacy and exorcism TextGrids) lists the tiers' headers (class, name, xmin,
xmax; no counts) and then every interval or point of every tier in time order, each as the
1-based number of its tier, its times (xmin and xmax, or the point's time) and its label.
The same tokens read it; each tier's items come back in file order.

Files are decoded as Praat writes them: UTF-8 (with or without BOM), UTF-16 (with or
without BOM) or Latin-1. A file in none of these formats (e.g. Praat's binary format) is one
:class:`~core.errors.DataError` naming the file and the formats read.

Example
-------
>>> tiers = read_textgrid("derivative/TextGrids/souls.TextGrid")  # doctest: +SKIP
>>> tiers["word"][:2]  # doctest: +SKIP
[Interval(start=0.0, end=0.31, label=''), Interval(start=0.31, end=0.52, label='the')]
"""

from __future__ import annotations

import codecs
import re
from pathlib import Path
from typing import NamedTuple

from core.errors import DataError


class Interval(NamedTuple):
    """One labelled stretch of a tier, times in seconds on the audio file's clock.

    A point of a TextTier is read as an interval with ``start == end``.
    """

    start: float
    end: float
    label: str


_TOLERANCE = 1e-9  # seconds; write_textgrid treats boundaries closer than this as equal

# A quoted string (a doubled quote "" stands for one "), a number, a flag, or a bare word
# or bracketed index of the long format's labels; comments run from "!" to the line end.
_TOKEN = re.compile(
    r'"(?P<string>(?:[^"]|"")*)"'
    r"|(?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
    r"|(?P<flag><exists>|<absent>)"
    r"|\[\s*\d*\s*\]|[A-Za-z_][\w?]*|!.*"
)


_CHRONOLOGICAL = "Praat chronological TextGrid text file"
_FORMATS = "Praat's long, short or chronological text format"


def read_textgrid(path: str | Path) -> dict[str, list[Interval]]:
    """Read a Praat TextGrid in the long, short or chronological text format.

    Parameters
    ----------
    path : str or Path
        The ``.TextGrid`` file: UTF-8 (with or without BOM), UTF-16 (as Praat writes
        files with non-ASCII labels) or Latin-1.

    Returns
    -------
    tiers : dict of str to list of Interval
        Tier name -> its intervals (or points) in file order, empty labels included.
        Where two tiers share a name, the first one is kept.

    Raises
    ------
    DataError
        The file is missing, is in none of the three text formats, or a value is missing
        or malformed.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read TextGrid ({e.strerror or e})") from None
    text = _decode(raw)
    tokens = _Tokens(path, _tokenise(text))
    first = tokens.tokens[0] if tokens.tokens else ("nothing", "")
    if first == ("string", _CHRONOLOGICAL):
        tokens.position = 1
        return _read_chronological(tokens)
    second = tokens.tokens[1] if len(tokens.tokens) > 1 else ("nothing", "")
    if first[0] != "string" or not first[1].startswith("ooTextFile") or second != ("string", "TextGrid"):
        found = text.lstrip()[:60].split("\n")[0].strip()
        raise DataError(f"{path}: not a TextGrid in {_FORMATS} (it starts with {found!r})")
    tokens.position = 2
    tokens.number("xmin")
    tokens.number("xmax")
    if tokens.flag() == "<absent>":
        return {}
    tiers: dict[str, list[Interval]] = {}
    for _ in range(tokens.count("number of tiers")):
        name, intervals = _read_tier(tokens)
        tiers.setdefault(name, intervals)
    return tiers


def write_textgrid(path: str | Path, tiers: dict[str, list[Interval]], duration: float) -> None:
    """Write a long-format Praat TextGrid with one IntervalTier per entry.

    Praat requires each IntervalTier to cover ``[0, duration]`` without gaps, so gaps
    between the given intervals are filled with empty-label intervals.

    Parameters
    ----------
    path : str or Path
        Output file; parent folders are created.
    tiers : dict of str to list of Interval
        Tier name -> intervals sorted by time, not overlapping, within ``[0, duration]``.
    duration : float
        Length of the recording in seconds (the TextGrid's ``xmax``).

    Raises
    ------
    ValueError
        Intervals overlap, are unsorted or fall outside ``[0, duration]`` (by more than
        ``_TOLERANCE``; closer boundaries are snapped together).
    """
    lines = [
        'File type = "ooTextFile"',
        'Object class = "TextGrid"',
        "",
        "xmin = 0",
        f"xmax = {duration!r}",
        "tiers? <exists>",
        f"size = {len(tiers)}",
        "item []:",
    ]
    for tier_index, (name, intervals) in enumerate(tiers.items(), start=1):
        filled = _fill_gaps(name, intervals, duration)
        lines += [
            f"    item [{tier_index}]:",
            '        class = "IntervalTier"',
            f"        name = {_quote(name)}",
            "        xmin = 0",
            f"        xmax = {duration!r}",
            f"        intervals: size = {len(filled)}",
        ]
        for i, (start, end, label) in enumerate(filled, start=1):
            lines += [
                f"        intervals [{i}]:",
                f"            xmin = {start!r}",
                f"            xmax = {end!r}",
                f"            text = {_quote(label)}",
            ]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _decode(raw: bytes) -> str:
    """Decode by BOM; without one, UTF-8, falling back to Latin-1 (old Praat files)."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return raw.decode("utf-16")
    # UTF-16 without a BOM: the ASCII "File type" header leaves a zero byte in each pair.
    if raw[:1] == b"\x00":
        return raw.decode("utf-16-be")
    if raw[1:2] == b"\x00":
        return raw.decode("utf-16-le")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _tokenise(text: str) -> list[tuple[str, str]]:
    """The file's values as (kind, text) pairs, kind in {"string", "number", "flag"}."""
    tokens = []
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup
        if kind == "string":
            tokens.append((kind, match.group("string").replace('""', '"')))
        elif kind is not None:
            tokens.append((kind, match.group(kind)))
    return tokens


class _Tokens:
    """A cursor over the tokens that raises DataError naming the file on a mismatch."""

    def __init__(self, path: Path, tokens: list[tuple[str, str]]):
        self.path = path
        self.tokens = tokens
        self.position = 0

    def _next(self, kind: str, what: str) -> str:
        if self.position >= len(self.tokens):
            raise DataError(f"{self.path}: file ends early, expected {what} ({kind})")
        found_kind, value = self.tokens[self.position]
        if found_kind != kind:
            raise DataError(
                f"{self.path}: expected {what} ({kind}) at value {self.position + 1}, "
                f"found {found_kind} {value[:40]!r}"
            )
        self.position += 1
        return value

    def string(self, what: str) -> str:
        return self._next("string", what)

    def number(self, what: str) -> float:
        return float(self._next("number", what))

    def count(self, what: str) -> int:
        value = self.number(what)
        if value != int(value) or value < 0:
            raise DataError(f"{self.path}: expected {what} as a count, found {value!r}")
        return int(value)

    def flag(self) -> str:
        """The ``<exists>`` flag; some writers omit it, which means the tiers exist."""
        if self.position < len(self.tokens) and self.tokens[self.position][0] == "flag":
            return self._next("flag", "tiers flag")
        return "<exists>"


def _read_tier(tokens: _Tokens) -> tuple[str, list[Interval]]:
    tier_class = tokens.string("tier class")
    name = tokens.string("tier name")
    tokens.number(f"xmin of tier {name!r}")
    tokens.number(f"xmax of tier {name!r}")
    n_items = tokens.count(f"number of items in tier {name!r}")
    if tier_class == "IntervalTier":
        return name, [
            Interval(
                tokens.number(f"xmin of interval {i} in tier {name!r}"),
                tokens.number(f"xmax of interval {i} in tier {name!r}"),
                tokens.string(f"text of interval {i} in tier {name!r}"),
            )
            for i in range(1, n_items + 1)
        ]
    if tier_class == "TextTier":
        points = []
        for i in range(1, n_items + 1):
            time = tokens.number(f"time of point {i} in tier {name!r}")
            mark = tokens.string(f"mark of point {i} in tier {name!r}")
            points.append(Interval(time, time, mark))
        return name, points
    raise DataError(
        f"{tokens.path}: tier {name!r} has class {tier_class!r}, "
        'expected "IntervalTier" or "TextTier"'
    )


def _read_chronological(tokens: _Tokens) -> dict[str, list[Interval]]:
    """The rest of a chronological file, after its first line (see the module docstring)."""
    tokens.number("xmin")
    tokens.number("xmax")
    headers = []
    for _ in range(tokens.count("number of tiers")):
        tier_class = tokens.string("tier class")
        name = tokens.string("tier name")
        if tier_class not in ("IntervalTier", "TextTier"):
            raise DataError(
                f"{tokens.path}: tier {name!r} has class {tier_class!r}, "
                'expected "IntervalTier" or "TextTier"'
            )
        tokens.number(f"xmin of tier {name!r}")
        tokens.number(f"xmax of tier {name!r}")
        headers.append((tier_class, name))
    items: list[list[Interval]] = [[] for _ in headers]
    while tokens.position < len(tokens.tokens):
        number = tokens.count("tier number")
        if not 1 <= number <= len(headers):
            raise DataError(
                f"{tokens.path}: an item of tier {number} at value {tokens.position}, "
                f"but the file has {len(headers)} tiers"
            )
        tier_class, name = headers[number - 1]
        start = tokens.number(f"time of an item in tier {name!r}")
        end = tokens.number(f"xmax of an item in tier {name!r}") if tier_class == "IntervalTier" else start
        items[number - 1].append(Interval(start, end, tokens.string(f"text of an item in tier {name!r}")))
    tiers: dict[str, list[Interval]] = {}
    for (_, name), intervals in zip(headers, items):
        tiers.setdefault(name, intervals)
    return tiers


def _fill_gaps(name: str, intervals: list[Interval], duration: float) -> list[Interval]:
    """Add empty intervals so the tier covers [0, duration] without gaps.

    Boundaries within _TOLERANCE of the previous end or of ``duration`` are snapped to it,
    so times computed in floating point (sample counts / rate) need no rounding by callers.
    """
    filled = []
    cursor = 0.0
    for start, end, label in intervals:
        if start < cursor - _TOLERANCE or end < start or end > duration + _TOLERANCE:
            raise ValueError(
                f"tier {name!r}: interval ({start}, {end}, {label!r}) overlaps the previous one "
                f"or lies outside [0, {duration}]"
            )
        end = float(duration) if abs(duration - end) <= _TOLERANCE else float(end)
        start = cursor if start - cursor <= _TOLERANCE else min(float(start), end)
        if start > cursor:
            filled.append(Interval(cursor, start, ""))
        filled.append(Interval(start, max(end, start), label))
        cursor = max(end, start)
    if cursor < duration:
        filled.append(Interval(cursor, float(duration), ""))
    return filled


def _quote(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'
