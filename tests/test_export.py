"""Export (core.export): a tuned run loaded with transformers + peft alone computes what ours does.

A tiny run is trained (WavLM: the dataset's own checkpoint; HuBERT: a tiny one built from a
config), exported, and loaded without any project code: peft's ``PeftModel.from_pretrained``
on the base checkpoint (merged, as WavLM needs; HuBERT also unmerged) and the merged
checkpoint. Their hidden states at the read-out layer must equal our encoder's on the tuned
model to 1e-5, and the readout file must hold the run's readout and voxel order.
"""

from __future__ import annotations

import json

import pytest
import yaml
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModel

from core import export
from core.backbones import cnn_features, encode
from core.cli import run
from core.config import TrainConfig
from core.data.dataset import Dataset
from core.errors import ConfigError
from core.run import run as run_training
from core.tuning.trainer import Trainer
from tests.test_backbones import audio, tiny

LAYER = 2


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def trained_run(family: str, data, tmp_path) -> tuple[Trainer, str]:
    """A one-epoch run of ``family`` on ``data``; the trainer holds the last epoch's (tuned) weights."""
    model = str(data / "pretrained")
    if family != "wavlm":
        model = str(tmp_path / family)
        tiny(family, seed=4, feat_extract_norm="layer").save_pretrained(model)
    config = TrainConfig(model=model, readout_layer=LAYER, lora_layers=[1, 2], lora_targets=["q_proj", "v_proj"],
                         epochs=1, block_trs=35, bottleneck=8, lr=1e-2, context=0.75, chunk=0.25, stride=1.0,
                         device="cpu")
    return run_training(config, Dataset(data), "UTS01", tmp_path / "run").trainer, model


@pytest.mark.parametrize("family", ["wavlm", "hubert"])
def test_the_export_computes_our_hidden_states_with_transformers_and_peft_alone(family, tiny_data, tmp_path):
    trainer, base = trained_run(family, tiny_data, tmp_path)
    out = tmp_path / "export"
    # The last epoch: its adapters are non-zero whichever epoch validation picked.
    assert run(export.main, [str(trainer.out), "--data", str(tiny_data), "--out", str(out), "--checkpoint", "last"]) == 0

    x = audio(1.5, seed=7)[None]
    net = trainer.model.wavlm.eval()
    with torch.no_grad():
        ours = encode(net, cnn_features(net, x), LAYER)[LAYER]
        frozen = AutoModel.from_pretrained(base).eval()(x, output_hidden_states=True).hidden_states[LAYER]
        assert (ours - frozen).abs().max() > 1e-3  # the tuning changed the layer: the check below means something
        loaded = {"merged": AutoModel.from_pretrained(out / "merged"),
                  "adapter, merged": PeftModel.from_pretrained(AutoModel.from_pretrained(base), out / "adapter")
                  .merge_and_unload()}
        if family != "wavlm":  # WavLM's attention bypasses unmerged q/k/v adapters (core.export)
            loaded["adapter"] = PeftModel.from_pretrained(AutoModel.from_pretrained(base), out / "adapter")
        for route, model in loaded.items():
            theirs = model.eval()(x, output_hidden_states=True).hidden_states[LAYER]
            torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0, msg=lambda m: f"{route}: {m}")

    readout = load_file(out / "readout.safetensors")
    info = json.loads((out / "readout.json").read_text())
    assert info["subject"] == "UTS01" and info["readout_layers"] == [LAYER] and info["delays"] == list(trainer.config.delays)
    assert info["subjects"]["UTS01"]["n_voxels"] == Dataset(tiny_data).n_voxels("UTS01")
    assert readout["UTS01.voxels"].tolist() == trainer.members[0].outputs.tolist()
    for name, value in [("down.weight", trainer.model.readout.down.weight), ("up.bias", trainer.model.readout.up.bias),
                        ("norm.mean", trainer.model.norm.mean)]:
        key = name if name.startswith("norm.") else f"UTS01.{name}"
        torch.testing.assert_close(readout[key], value.detach())

    if family == "wavlm":  # a blocks run's features need our chunked attention, which transformers lacks: refused
        settings = yaml.safe_load((trainer.out / "config.yaml").read_text())
        (trainer.out / "config.yaml").write_text(yaml.safe_dump({**settings, "extraction": "blocks"}))
        with pytest.raises(ConfigError, match="extraction: blocks cannot be exported"):
            export.export(trainer.out, tiny_data, tmp_path / "refused")

    if family == "hubert":  # the sweep's tracker logs the same export (no merged copy) to the best trial's run
        from mlflow.tracking import MlflowClient

        from sweeper.tracking import MLflowTracker

        tracker = MLflowTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "export", (tmp_path / "artifacts").as_uri(),
                                sweep={}, subjects=[], trial_dir=lambda trial: None, data=str(tiny_data))
        client = MlflowClient(tracker.tracking_uri)
        run_id = client.create_run(client.create_experiment("export", (tmp_path / "artifacts").as_uri())).info.run_id
        tracker._log_export(run_id, trainer.out)  # peft adds a model card (adapter/README.md) to these
        logged = {a.path for path in ("export", "export/adapter") for a in client.list_artifacts(run_id, path)}
        assert logged >= {"export/adapter", "export/readout.json", "export/readout.safetensors",
                          "export/adapter/adapter_config.json", "export/adapter/adapter_model.safetensors"}
