"""Export a tuned model for use without this project: ``python -m core.export RUN_DIR --data DIR --out DIR``.

``RUN_DIR`` is a finished run (``python -m core.train --out RUN_DIR``, or a sweep's trial
folder ``<storage>/trials/<subject>/<trial_id>``); ``--data`` is the dataset it was
trained on (it fixes which of the subject's voxels the readout predicts). Written to
``--out``:

- ``adapter/``: the LoRA adapters in peft's own format (``adapter_config.json`` +
  ``adapter_model.safetensors``), for the transformers model of the base checkpoint::

      base = transformers.AutoModel.from_pretrained(BASE)
      model = peft.PeftModel.from_pretrained(base, "OUT/adapter").merge_and_unload()

  **Merge WavLM's adapters** (``merge_and_unload``): transformers' ``WavLMAttention``
  hands the q/k/v weights straight to ``F.multi_head_attention_forward``, so unmerged
  adapters on them never run (BRIEF section 5; :mod:`core.backbones`). HuBERT and wav2vec2
  call their projections, so their adapters work merged or not.
- ``merged/``: the base checkpoint with the adapters folded into its weights
  (``save_pretrained``; ``AutoModel.from_pretrained("OUT/merged")``): the robust route,
  the same for every family. A run that tuned whole layers (``lora_rank: 0``) has no
  ``adapter/``, only this.
- ``readout.safetensors`` and ``readout.json``: every trained subject's readout and the
  voxel order it predicts, with what turns the model's hidden states into its input
  (read-out layer(s), windows, normalisation, delays); ``readout.json`` spells the
  recipe out.

The checkpoint exported is the run's best epoch (``--checkpoint best``, the one whose
features gave ``tuned``) or its last (``--checkpoint last``). Whisper runs are not
exported: our encoder cuts Whisper's positional embeddings to the window
(:mod:`core.backbones`), which transformers' ``WhisperEncoder`` cannot reproduce.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from core.backbones import FAMILIES, checkpoint_config, quiet_transformers, target_module_name
from core.config import TrainConfig
from core.data.dataset import Dataset
from core.errors import ConfigError
from core.outputs import atomic_dir, write_json
from core.tuning.members import Cohort

__all__ = ["export", "base_model", "main"]

#: Where a run keeps its checkpoints, by ``--checkpoint``.
CHECKPOINTS = {"best": "checkpoints/best.pt", "last": "checkpoints/last.pt"}

_RECIPE = (
    "x(t) = hidden_states[layer] of the exported model (transformers' output_hidden_states; "
    "several layers: the layer_weights-weighted sum) on 16 kHz mono audio. One vector per window: "
    "windows of `context + chunk` seconds every `stride` seconds, the mean of the frames of the "
    "window's last `chunk` seconds, stamped at the window's end (core.encoding.extract.window_vectors). "
    "Window vectors -> TR times by 3-lobe Lanczos interpolation (core.encoding.features.LanczosOperator). "
    "z = (x - norm.mean) / sqrt(norm.var + norm_eps). Features = [z shifted by d TRs for d in "
    "delays] concatenated (core.encoding.features.delay_features). Prediction = up(down(features)) "
    "(`<subject>.down.weight` absent: up(features)), one column per voxel `<subject>.voxels` "
    "(indices into the subject's response columns, derivative/preprocessed_data/<subject>/*.hf5)."
)


def base_model(name: str):
    """The base checkpoint as transformers loads it (its own class, its own config), in eval mode."""
    import transformers

    config = checkpoint_config(name)
    if config.model_type == "whisper":
        raise ConfigError(f"{name!r} is a Whisper checkpoint: its runs cannot be exported (our encoder cuts "
                          "Whisper's positional embeddings to the window, which transformers cannot reproduce)")
    with quiet_transformers():
        return getattr(transformers, FAMILIES[config.model_type]).from_pretrained(name).eval()


def _backbone_state(state: dict) -> dict[str, torch.Tensor]:
    """The tuned backbone weights of a checkpoint's model state, named as in the transformers model."""
    return {key.removeprefix("wavlm."): value for key, value in state.items() if key.startswith("wavlm.")}


def _adapted(config: TrainConfig, model_name: str, backbone: dict[str, torch.Tensor]):
    """The base model with the run's adapters (a ``PeftModel``), or with its tuned layers (``lora_rank: 0``)."""
    net = base_model(model_name)
    if config.lora_rank == 0:
        missing = set(backbone) - set(net.state_dict())
        if missing:
            raise ConfigError(f"the checkpoint's tuned weights {sorted(missing)[:3]} are not in {model_name!r}")
        net.load_state_dict(backbone, strict=False)
        return net
    from peft import LoraConfig, get_peft_model

    names = [target_module_name(net.config, layer, t) for layer in config.lora_layer_list() for t in config.lora_targets]
    peft_model = get_peft_model(net, LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha,
                                                lora_dropout=config.lora_dropout, target_modules=names, bias="none"))
    adapters = {name: p for name, p in peft_model.named_parameters() if "lora_" in name}
    ours = {f"base_model.model.{key}": value for key, value in backbone.items()}
    if set(adapters) != set(ours):
        raise ConfigError(f"the checkpoint's adapters do not match the run's settings: {len(ours)} saved, "
                          f"{len(adapters)} expected (e.g. {sorted(set(adapters) ^ set(ours))[:2]})")
    with torch.no_grad():
        for name, p in adapters.items():
            p.copy_(ours[name])
    return peft_model.eval()


def _readouts(config: TrainConfig, state: dict, members) -> tuple[dict[str, torch.Tensor], dict]:
    """Readout tensors (voxel order included) and their description, every trained subject's."""
    tensors = {"norm.mean": state["norm.mean"], "norm.var": state["norm.var"]}
    layers = config.readout_layers or [config.readout_layer]
    weights = torch.softmax(state["layer_logits"], 0) if "layer_logits" in state else torch.ones(1)
    tensors["layer_weights"] = weights
    subjects = {}
    for i, member in enumerate(members):
        prefix = "readout." if i == 0 else f"cotrained.{member.name}."
        for key, value in state.items():
            if key.startswith(prefix):
                tensors[f"{member.name}.{key.removeprefix(prefix)}"] = value
        tensors[f"{member.name}.voxels"] = torch.from_numpy(np.asarray(member.outputs, dtype=np.int64))
        subjects[member.name] = {"n_voxels": int(len(member.voxel_weights)), "n_predicted": int(len(member.outputs))}
    info = {"subjects": subjects, "readout_layers": layers, "layer_weights": weights.tolist(),
            "delays": list(config.delays), "context": config.context, "chunk": config.chunk, "stride": config.stride,
            "sampling_rate": 16000, "norm_eps": 1e-6, "bottleneck": config.bottleneck, "recipe": _RECIPE}
    return {key: value.detach().cpu().float().contiguous() if value.is_floating_point() else value.contiguous()
            for key, value in tensors.items()}, info


def export(run_dir, data, out, checkpoint: str = "best", merged: bool = True) -> Path:
    """Write the run's tuned model (adapters, merged checkpoint, readouts) to ``out`` (module docstring).

    Parameters
    ----------
    run_dir : a finished run's folder (``summary.json``, ``config.yaml``, ``checkpoints/``).
    data : the dataset root the run was trained on (for the voxel order).
    out : the export folder; replaced as a whole once everything is written.
    checkpoint : ``"best"`` or ``"last"``.
    merged : also write ``merged/`` (the size of the base checkpoint).

    Raises
    ------
    ConfigError
        The run is unfinished, of a Whisper checkpoint, or its checkpoint does not match
        its settings.
    """
    run_dir = Path(run_dir)
    if checkpoint not in CHECKPOINTS:
        raise ConfigError(f"checkpoint: {checkpoint!r} is not one of {', '.join(CHECKPOINTS)}")
    paths = [run_dir / "summary.json", run_dir / "config.yaml", run_dir / CHECKPOINTS[checkpoint]]
    for path in paths:
        if not path.is_file():
            raise ConfigError(f"{path} is missing: export a finished run (the --out of python -m core.train)")
    summary = json.loads(paths[0].read_text())
    config = TrainConfig.load(paths[1])
    state = torch.load(paths[2], map_location="cpu", weights_only=False)
    if config.extraction != "windows":
        raise ConfigError(f"{paths[1]}: a run with extraction: {config.extraction} cannot be exported: its features "
                          "need the chunked attention mask of core.encoding.blocks, which transformers' forward "
                          "(the export's recipe) does not apply")
    if state["identity"] != config.identity():
        raise ConfigError(f"{paths[2]} holds a run with other settings than {paths[1]}")
    members = Cohort.load(config, Dataset(data), summary["subject"]).members
    tensors, info = _readouts(config, state["model"], members)
    model = _adapted(config, summary["model"], _backbone_state(state["model"]))
    with atomic_dir(out) as tmp:
        if config.lora_rank:
            model.save_pretrained(tmp / "adapter")
            model = model.merge_and_unload()
        if merged:
            model.save_pretrained(tmp / "merged")
        save_file(tensors, tmp / "readout.safetensors")
        write_json(tmp / "readout.json", {"base_model": summary["model"], "subject": summary["subject"],
                                          "epoch": state["epoch"], "checkpoint": checkpoint, "run": str(run_dir),
                                          **info})
    return Path(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.export", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("run_dir", help="a finished run's folder (the --out of python -m core.train, or a trial folder)")
    parser.add_argument("--data", required=True, help="the dataset root the run was trained on (for the voxel order)")
    parser.add_argument("--out", required=True, help="export folder (replaced)")
    parser.add_argument("--checkpoint", choices=list(CHECKPOINTS), default="best",
                        help="the best epoch's weights (the run's 'tuned') or the last epoch's")
    parser.add_argument("--no-merged", dest="merged", action="store_false",
                        help="leave out merged/ (a full copy of the base checkpoint)")
    args = parser.parse_args(argv)
    out = export(args.run_dir, args.data, args.out, args.checkpoint, args.merged)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    from core.cli import run

    sys.exit(run(main))
