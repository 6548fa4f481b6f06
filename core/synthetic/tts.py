"""Real speech with word times, offline: text spoken by the Festival speech synthesiser.

Each sentence becomes a 16-kHz clip ``NNNN.wav`` with a TextGrid ``NNNN.TextGrid`` beside it
(``word`` and ``phone`` tiers, Festival's own segment times; its pauses are left
unlabelled). A folder of such clips is what :mod:`core.synth` takes as ``--speech``: it
then writes the stories' TextGrids too, so the word-level probes (:mod:`core.studies.probes`) run
on the real-speech planted dataset.

    python -m core.tts --text /usr/share/common-licenses/GPL-3 --out speech/ [--max-sentences 400]

Needs ``festival`` and a voice (Debian: ``apt install festival festvox-kallpc16k``).
Festival expands numbers and abbreviations into the words it speaks; those are the words
written.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from core.cli import run
from core.data import dataset as ds
from core.data.audio import read_wav
from core.data.textgrid import Interval
from core.errors import DataError

__all__ = ["sentences", "speak", "FESTIVAL_HINT"]

FESTIVAL_HINT = "Debian/Ubuntu: apt install festival festvox-kallpc16k"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_SPOKEN = re.compile(r"[^A-Za-z0-9 ,.;:!?'()-]")
PAUSE = "pau"  # Festival's silence segment


def sentences(text: str, min_words: int = 4, max_words: int = 40) -> list[str]:
    """Prose -> sentences to speak: whitespace joined, characters Festival cannot say dropped,
    sentences of ``min_words``..``max_words`` words kept, in order."""
    flat = " ".join(_SPOKEN.sub(" ", text).split())
    return [s for s in _SENTENCE_END.split(flat) if min_words <= len(s.split()) <= max_words]


def _scheme_string(text: str) -> str:
    return '"' + text.replace("\\", " ").replace('"', " ") + '"'


_SCRIPT = """
(define (seg_start s) (if (item.prev s) (item.feat (item.prev s) "end") 0))
(define (say i text wav)
  (let ((utt (utt.synth (eval (list (quote Utterance) (quote Text) text)))))
    (utt.save.wave utt wav 'riff)
    (mapcar (lambda (w)
              (format t "W\\t%d\\t%s\\t%f\\t%f\\n" i (item.name w)
                      (item.feat w "R:SylStructure.daughter1.daughter1.R:Segment.p.end")
                      (item.feat w "R:SylStructure.daughtern.daughtern.R:Segment.end")))
            (utt.relation.items utt 'Word))
    (mapcar (lambda (s) (format t "P\\t%d\\t%s\\t%f\\t%f\\n" i (item.name s) (seg_start s) (item.feat s "end")))
            (utt.relation.items utt 'Segment))))
"""


def speak(texts: list[str], out, *, progress=lambda message: None) -> list[Path]:
    """Speak each text with Festival into ``out/NNNN.wav`` + ``out/NNNN.TextGrid``; returns the wav paths.

    One Festival process speaks them all. Raises DataError when Festival is missing or
    fails; a clip Festival made no words for is an error too.
    """
    festival = shutil.which("festival")
    if festival is None:
        raise DataError(f"festival: not found on PATH ({FESTIVAL_HINT})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    wavs = [out / f"{i:04d}.wav" for i in range(len(texts))]
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "speak.scm"
        lines = [_SCRIPT] + [f"(say {i} {_scheme_string(text)} {_scheme_string(str(wav))})"
                             for i, (text, wav) in enumerate(zip(texts, wavs))]
        script.write_text("\n".join(lines) + "\n")
        progress(f"festival: speaking {len(texts)} sentences")
        done = subprocess.run([festival, "-b", str(script)], capture_output=True, text=True)
    if done.returncode != 0:
        raise DataError(f"festival failed ({done.returncode}): {' '.join(done.stderr.split())[:300]}")
    tiers: dict[int, dict[str, list[Interval]]] = {i: {"word": [], "phone": []} for i in range(len(texts))}
    for line in done.stdout.splitlines():
        kind, i, label, start, end = (line.split("\t") + [""] * 5)[:5]
        if kind in ("W", "P") and i.isdigit():
            tier = tiers[int(i)]["word" if kind == "W" else "phone"]
            start, end = float(start), float(end)
            # A token Festival gives no sound of its own (e.g. a split-off "'s") has no time: left out.
            if end > start and (not tier or start >= tier[-1].end - 1e-6):
                tier.append(Interval(start, end, "" if label == PAUSE else label))
    for i, wav in enumerate(wavs):
        if not wav.exists() or not tiers[i]["word"]:
            raise DataError(f"festival: no speech for sentence {i} ({texts[i][:60]!r})")
        audio, rate = read_wav(wav)
        ds.write_textgrid(wav.with_suffix(".TextGrid"), tiers[i], len(audio) / rate)
    return wavs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.tts", description=__doc__.splitlines()[0])
    parser.add_argument("--text", nargs="+", required=True, help="text files of prose to speak")
    parser.add_argument("--out", required=True, help="folder for the clips (NNNN.wav + NNNN.TextGrid)")
    parser.add_argument("--max-sentences", type=int, default=None, help="speak at most this many sentences")
    args = parser.parse_args(argv)
    texts = []
    for path in args.text:
        try:
            texts += sentences(Path(path).read_text(errors="replace"))
        except OSError as error:
            raise DataError(f"{path}: cannot read ({error.strerror})") from None
    texts = texts[: args.max_sentences] if args.max_sentences else texts
    if not texts:
        raise DataError(f"{', '.join(args.text)}: no sentences of 4-40 words")
    wavs = speak(texts, args.out, progress=print)
    print(f"wrote {len(wavs)} clips to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
