"""TrainConfig: defaults, YAML and overrides, every invalid value, serialisation, checks against a subject."""

from __future__ import annotations

import doctest
import json
import re

import pytest
import yaml

from core.config import TrainConfig
import core.config
from core.errors import ConfigError


def test_defaults_are_valid_and_documented():
    config = TrainConfig()
    config.validate()
    assert config.lora_layer_list() == list(range(1, 10))
    for name in config.to_dict():
        assert f"\n{name} " in core.config.__doc__, f"{name} missing from the settings table"


def test_docstring_example_runs():
    assert doctest.testmod(core.config).failed == 0


def test_yaml_then_overrides_in_order(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: 1e-4\nlora_rank: 8\nlora_layers: [5, 6]\nmodel: some/model\nroi_weights: {AC: 1}\n")
    config = TrainConfig.load(path, ["lr=3e-4", "lora_layers=[1,2]", "roi_weights={AC: 1, rest: 0.25}",
                                     "model=null", "lr=5e-4", "cnn_cache=off"])
    assert config.lr == 5e-4
    assert config.lora_rank == 8
    assert config.lora_layers == [1, 2]
    assert config.roi_weights == {"AC": 1.0, "rest": 0.25}
    assert config.model is None
    assert config.cnn_cache == "off"
    assert TrainConfig.load(path).lr == 1e-4
    assert TrainConfig.load(None, ["epochs=3"]) == TrainConfig(epochs=3)


def test_coercions():
    config = TrainConfig.from_dict({"lora_alpha": 16, "lora_layers": 3, "delays": "0, 1,2",
                                    "lora_targets": "q_proj,v_proj", "test_stories": "story_a"})
    assert config.lora_alpha == 16.0 and isinstance(config.lora_alpha, float)
    assert config.lora_layers == [3]
    assert config.delays == [0, 1, 2]
    assert config.lora_targets == ["q_proj", "v_proj"]
    assert config.test_stories == ["story_a"]


def test_readout_layers_set_readout_layer():
    assert TrainConfig.from_dict({"readout_layers": "3,5"}).readout_layer == 5
    with pytest.raises(ConfigError, match=r"readout_layer: differs from max\(readout_layers\) = 5"):
        TrainConfig.from_dict({"readout_layers": [3, 5], "readout_layer": 9})
    assert TrainConfig().replace(readout_layer=5, readout_layers=[3, 5]).readout_layers == [3, 5]


@pytest.mark.parametrize("name, value", [
    ("model", ""), ("model", 3),
    ("readout_layer", 0), ("readout_layer", 2.5), ("readout_layer", True),
    ("readout_layers", [4]), ("readout_layers", [9, 4]),
    ("lora_layers", []), ("lora_layers", [2, 1]), ("lora_layers", [1, 1]), ("lora_layers", [0, 1]),
    ("lora_layers", "1,x"),
    ("lora_rank", -1), ("lora_alpha", 0), ("lora_dropout", 1.0), ("lora_dropout", -0.1),
    ("lora_targets", []), ("lora_targets", ["q_proj", "query"]), ("lora_targets", ["q_proj", "q_proj"]),
    ("lr", -1e-4), ("lr", "fast"), ("lr", float("nan")), ("readout_lr", -1e-3), ("weight_decay", -1),
    ("epochs", -1), ("block_trs", 0), ("bottleneck", -1), ("loss", "l1"),
    ("roi_weights", {"AC": -1}), ("roi_weights", {"AC": 0, "rest": 0}), ("roi_weights", [1]),
    ("roi_weights", {"AC": "heavy"}),
    ("readout_init", "zeros"), ("readout_refit", "often"), ("readout_refit_steps", -1),
    ("readout_refit_steps", 5), ("readout_whiten", -0.1), ("seed", -1),
    ("delays", []), ("delays", [-1, 1]), ("delays", [1, 1]),
    ("context", 0), ("chunk", -0.25), ("stride", 0), ("extraction", "streaming"), ("block_seconds", 0),
    ("layerdrop", 1), ("dropout", 1),
    ("precision", "fp16"), ("device", "gpu"), ("device", "cuda:x"), ("cnn_cache", "maybe"),
    ("batch_windows", 0), ("test_stories", []), ("val_stories", ["a", "a"]),
    ("ridge_backend", "jax"), ("ridge_backend", "cupy"), ("norm_momentum", 0), ("norm_momentum", 1.5),
])
def test_invalid_value_names_the_setting(name, value):
    with pytest.raises(ConfigError, match=rf"^run\.yaml: {name}: .*\(got .*; expected .*\)$"):
        TrainConfig.from_dict({name: value}, source="run.yaml")
    with pytest.raises(ConfigError, match=rf"^{name}: "):
        TrainConfig(**{name: value})


def test_every_accepted_ridge_backend_is_one_the_ridge_fits_run_on():
    """A backend that passes validation but that core.encoding.ridge cannot run (cupy) failed every trial at epoch 0."""
    from core.config import RIDGE_BACKENDS
    from core.encoding.ridge import torch_device

    for backend in RIDGE_BACKENDS:
        torch_device(backend)


def test_test_and_val_stories_must_not_overlap():
    with pytest.raises(ConfigError, match=r"val_stories: shares \['b'\]"):
        TrainConfig(test_stories=["a", "b"], val_stories=["b", "c"])


def test_unknown_setting_suggests_the_closest(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lora_rnak: 8\n")
    expected = rf"{re.escape(str(path))}: unknown setting 'lora_rnak'; did you mean 'lora_rank'\?"
    with pytest.raises(ConfigError, match=expected):
        TrainConfig.load(path)
    with pytest.raises(ConfigError, match=r"override 'readout_layr=3': unknown setting .*'readout_layer'"):
        TrainConfig.load(None, ["readout_layr=3"])
    with pytest.raises(ConfigError, match="did you mean 'bottleneck'"):
        TrainConfig().replace(botleneck=3)


def test_bad_value_names_the_override_it_came_from(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: 1e-4\n")
    with pytest.raises(ConfigError, match=r"^override 'epochs=-2': epochs: is negative"):
        TrainConfig.load(path, ["epochs=-2"])
    path.write_text("epochs: -2\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: epochs: is negative"):
        TrainConfig.load(path, ["lr=1e-3"])


@pytest.mark.parametrize("contents, message", [
    (None, "config file not found"),
    ("lr: [1\n", "not valid YAML"),
    ("- lr\n", "expected a mapping"),
])
def test_bad_file_names_the_file(tmp_path, contents, message):
    path = tmp_path / "run.yaml"
    if contents is not None:
        path.write_text(contents)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: {message}"):
        TrainConfig.load(path)


@pytest.mark.parametrize("override, message", [
    ("lr", "expected name=value"),
    ("=3", "expected name=value"),
    ("roi_weights={AC: 1", "the value is not valid YAML"),
])
def test_bad_override_names_the_override(override, message):
    with pytest.raises(ConfigError, match=rf"^override {re.escape(repr(override))}: {message}"):
        TrainConfig.load(None, [override])


def test_to_dict_round_trip():
    config = TrainConfig(model="m", readout_layer=6, readout_layers=[2, 6], lora_layers=[4, 5], lora_rank=0,
                         roi_weights={"AC": 1.0, "rest": 0.5}, test_stories=["a"], val_stories=["b"],
                         device="cuda:1", precision="bf16")
    values = config.to_dict()
    assert TrainConfig.from_dict(values) == config
    assert TrainConfig.from_dict(yaml.safe_load(yaml.safe_dump(values))) == config
    assert TrainConfig.from_dict(json.loads(json.dumps(values))) == config
    values["delays"].append(9)
    assert config.delays == [1, 2, 3, 4]


def test_replace_validates():
    config = TrainConfig()
    assert config.replace(lr=3e-4).lr == 3e-4
    assert config.lr == 1e-4
    with pytest.raises(ConfigError, match="lr: is negative"):
        config.replace(lr=-1)


def test_flat_params():
    params = TrainConfig(lora_layers=[1, 2, 3], roi_weights={"AC": 1, "rest": 0.25}).flat_params()
    assert params["lora_layers"] == "1,2,3"
    assert params["delays"] == "1,2,3,4"
    assert params["lora_targets"] == "q_proj,k_proj,v_proj"
    assert params["model"] == "none" and params["test_stories"] == "none" and params["transfer_to"] == "[]"
    assert params["roi_weight.AC"] == 1.0 and params["roi_weight.rest"] == 0.25
    assert "roi_weights" not in params
    assert params["lr"] == 1e-4 and params["epochs"] == 20
    assert all(isinstance(value, (str, int, float)) for value in params.values())
    assert not any(key.startswith("roi_weight") for key in TrainConfig().flat_params())


SUBJECT = dict(n_layers=12, roi_names=["AC", "Broca"], story_trs={"short": 10, "long": 300})  # block_trs defaults to 10


@pytest.mark.parametrize("at_limit, past_limit, message", [
    (dict(readout_layer=12), dict(readout_layer=13), r"readout_layer: is above the model's 12 layers"),
    (dict(probe_layers=[1, 12]), dict(probe_layers=[1, 13]), r"probe_layers: is above the model's 12 layers"),
    (dict(readout_layer=5, lora_layers=[3, 5]), dict(readout_layer=5, lora_layers=[3, 6]),
     r"lora_layers: layer 6 is above readout_layer 5: its output would never be read"),
    (dict(roi_weights={"AC": 1, "Broca": 2, "rest": 0.1}), dict(roi_weights={"AC": 1, "V1": 1.0}),
     r"roi_weights: 'V1' is not one of the subject's ROIs .*AC, Broca, rest"),
    (dict(block_trs=10), dict(block_trs=11), r"block_trs: is longer than story 'short' \(10 TRs\)"),
], ids=["readout_layer", "probe_layers", "lora_layers", "roi_weights", "block_trs"])
def test_check_against_limits(at_limit, past_limit, message):
    """Each check accepts a config at its limit and refuses one a step past it (an off-by-one fails here)."""
    assert TrainConfig(**at_limit).check_against(**SUBJECT) is None
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**past_limit).check_against(**SUBJECT)
