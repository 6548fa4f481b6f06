"""Search-space files: the shipped ones are valid; bad ones get messages naming file and key."""

from __future__ import annotations

import json

from pathlib import Path

import optuna
import pytest
import yaml

from core.cli import run
from sweeper.launch import main as launch_main
from sweeper.space import SearchSpace, SpaceError, load_spec, optuna_point, parse_spec, train_config

SPACES = Path(__file__).resolve().parent.parent / "search_spaces"
GOOD = {"data": "synthetic:tiny", "fixed": {"readout_layer": 3}, "search": {"lr": {"loguniform": [1e-4, 1e-2]}}}


@pytest.mark.parametrize("path", sorted(SPACES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_spaces_are_valid_and_sample_valid_configs(path):
    spec = load_spec(path)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        config = train_config(spec.fixed, SearchSpace(spec)(trial)["settings"])
        assert all(layer <= config.readout_layer for layer in config.lora_layer_list())
        study.tell(trial, 0.0)
    for point in spec.points_to_evaluate:
        assert set(optuna_point(spec, point)) <= {p.name for p in spec.params} | {"lora_depth"}


@pytest.mark.parametrize("fixed", [{"readout_layer": 3}, {"readout_layers": [2, 3]}], ids=["layer", "layers"])
def test_top_layers_end_at_the_readout_layer(fixed):
    # With readout_layers alone, the read-out layer is their maximum (not the default 9).
    spec = load_spec_from({**GOOD, "fixed": fixed, "search": {"lora_layers": {"top_layers": [1, 3]}}})
    seen = set()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(30):
        trial = study.ask()
        layers = tuple(SearchSpace(spec)(trial)["settings"]["lora_layers"])
        assert layers[-1] == 3 and list(layers) == list(range(layers[0], 4))
        seen.add(layers)
        study.tell(trial, 0.0)
    assert seen == {(3,), (2, 3), (1, 2, 3)}


def test_conditional_setting_follows_its_condition():
    spec = load_spec_from({**GOOD, "search": {"loss": {"choice": ["spatial", "mse"]},
                                              "roi_weights.AC": {"uniform": [0.5, 2], "when": {"loss": "spatial"}}}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=2))
    for _ in range(20):
        trial = study.ask()
        settings = SearchSpace(spec)(trial)["settings"]
        assert ("roi_weights.AC" in settings) == (settings["loss"] == "spatial")
        config = train_config(spec.fixed, settings)
        assert ("AC" in config.roi_weights) == (config.loss == "spatial")
        study.tell(trial, 0.0)


def test_list_and_mapping_choices_come_back_as_the_files_values():
    choices = {"lora_layers": [[1], [2, 3]], "roi_weights": [{}, {"AC": 1.0, "rest": 0.25}]}
    spec = load_spec_from({**GOOD, "search": {k: {"choice": v} for k, v in choices.items()}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {k: [] for k in choices}
    for _ in range(12):
        trial = study.ask()
        settings = SearchSpace(spec)(trial)["settings"]
        for name, value in settings.items():
            assert value in choices[name] and type(value) is type(choices[name][0])
            seen[name].append(value)
        study.tell(trial, 0.0)
    assert all(len({json.dumps(v) for v in values}) == 2 for values in seen.values())


def load_spec_from(raw):
    return parse_spec(raw, "bad.yaml")


@pytest.mark.parametrize("change, expected", [
    ({"serach": {}}, "bad.yaml: serach: unknown key; did you mean 'search'?"),
    ({"data": None}, "bad.yaml: data: missing"),
    ({"search": {"lr": {"logunifrom": [1e-4, 1e-2]}}}, "search.lr: unknown kind 'logunifrom'; did you mean 'loguniform'?"),
    ({"search": {"learning_rate": {"loguniform": [1e-4, 1e-2]}}}, "search.learning_rate: not a setting"),
    ({"search": {"lr": {"loguniform": [0, 1e-2]}}}, "search.lr: loguniform needs low > 0"),
    ({"search": {"lr": {"uniform": [1e-2, 1e-4]}}}, "search.lr: low 0.01 is above high 0.0001"),
    ({"search": {"lora_rank": {"choice": []}}}, "search.lora_rank: choice needs a non-empty list"),
    ({"search": {"lora_rank": {"top_layers": [1, 3]}}}, "search.lora_rank: top_layers is for lora_layers"),
    ({"fixed": {"lora_rnak": 4}}, "unknown setting 'lora_rnak'; did you mean 'lora_rank'?"),
    ({"fixed": {"lr": -1}}, "lr"),
    ({"objective": {"metric": "accuracy"}}, "objective.metric: expected best_val_r"),
    ({"objective": [{"metric": "best_val_r"}, {"metric": "best_val_r.AC"}], "scheduler": {"asha": {}}},
     "scheduler: ASHA stops trials on one metric"),
    ({"scheduler": {"hyperband": {}}}, "scheduler: expected none or {asha"),
    ({"budget": {"trials": 0}}, "budget.trials: expected a positive integer"),
    ({"resources": {"gpus": 1}}, "resources.gpus: unknown key (allowed: workers, cpus_per_worker, gpus_per_worker)"),
    ({"points_to_evaluate": [{"lora_rank": 4}]}, "points_to_evaluate[0].lora_rank: not a searched setting"),
    ({"search": {"roi_weights.AC": {"uniform": [0, 1], "when": {"los": "mse"}}}}, "when: unknown setting 'los'"),
    ({"report": "rois"}, "report: unknown report 'rois'; did you mean 'roi'?"),
])
def test_bad_files_get_their_messages(change, expected):
    with pytest.raises(SpaceError) as err:
        load_spec_from({**GOOD, **change})
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_launch_reports_a_bad_file_in_one_line_before_ray_starts(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**GOOD, "search": {"lr": {"logunifrom": [1e-4, 1e-2]}}}))
    assert run(launch_main, ["--config", str(bad), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {bad}: search.lr") and "\n" not in err
    (tmp_path / "broken.yaml").write_text("search: [unclosed")
    assert run(launch_main, ["--config", str(tmp_path / "broken.yaml"), "--dry-run"]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_launch_checks_data_and_sampled_trials_before_ray(tiny_data, tmp_path, capsys):
    assert run(launch_main, ["--data", str(tmp_path / "nothing"), "--dry-run"]) == 2
    assert "dataset folder not found" in capsys.readouterr().err
    assert run(launch_main, ["--data", str(tiny_data), "--subjects", "UTS07", "--dry-run"]) == 2
    assert "no subject UTS07" in capsys.readouterr().err
    impossible = tmp_path / "impossible.yaml"
    impossible.write_text(yaml.safe_dump({"data": str(tiny_data), "fixed": {"readout_layer": 2},
                                          "search": {"lora_layers": {"choice": [[2], [3]]}}}))
    assert run(launch_main, ["--config", str(impossible), "--dry-run"]) == 2
    assert "above readout_layer" in capsys.readouterr().err
    assert run(launch_main, ["--data", str(tiny_data), "--dry-run"]) == 0
    assert "lora_layers: choice [[1], [2], [3]]" in capsys.readouterr().out  # demo.yaml, planned


def test_stability_study_runs_every_method_with_every_seed():
    spec = load_spec(SPACES / "stability.yaml")
    grid = {(p["seed"], p["lora_rank"], p["lr"]) for p in spec.points_to_evaluate}
    assert len(grid) == spec.trials == 9
    assert {(rank, lr) for _, rank, lr in grid} == {(4, 3e-3), (0, 3e-4), (4, 0.0)}  # LoRA, full FT, control
    assert {seed for seed, _, _ in grid} == {0, 1, 2}


def test_launch_checks_study_settings_before_ray(tiny_data, tmp_path, capsys):
    space = tmp_path / "transfer.yaml"
    space.write_text(yaml.safe_dump({"data": str(tiny_data), "fixed": {"readout_layer": 3, "transfer_to": ["UTS09"]}}))
    assert run(launch_main, ["--config", str(space), "--dry-run"]) == 2
    assert "transfer_to: no subject UTS09" in capsys.readouterr().err
    space.write_text(yaml.safe_dump({"data": str(tiny_data), "fixed": {"readout_layer": 3,
                                                                       "probes": [f"semantic:{tmp_path}/no.txt"]}}))
    assert run(launch_main, ["--config", str(space), "--dry-run"]) == 2
    assert "no word-vector file, folder or installed package" in capsys.readouterr().err


def test_backbones_searched_together_each_with_its_own_layers(tiny_data, tmp_path, capsys):
    """``model`` searched across families; ``readout_layer@variant`` gives each its own layers, checked before Ray."""
    from transformers import WhisperConfig, WhisperModel

    whisper = tmp_path / "whisper"  # a 2-layer Whisper; the dataset's own WavLM has 4
    WhisperModel(WhisperConfig(d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64,
                               decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=64, max_source_positions=100,
                               max_target_positions=16, vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                               decoder_start_token_id=1)).save_pretrained(whisper)
    wavlm = str(tiny_data / "pretrained")
    raw = {"data": str(tiny_data), "fixed": {"context": 0.75, "chunk": 0.25, "stride": 1.0},
           "search": {"model": {"choice": [wavlm, str(whisper)]},
                      "readout_layer@wavlm": {"choice": [3, 4], "when": {"model": wavlm}},
                      "readout_layer@whisper": {"int": [1, 2], "when": {"model": str(whisper)}},
                      "lora_layers": {"top_layers": [1, 2]}},
           "budget": {"trials": 2}}
    spec = parse_spec(raw, "families.yaml")
    space, study = SearchSpace(spec), optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        settings = space(trial)["settings"]
        variant = "wavlm" if settings["model"] == wavlm else "whisper"
        # Each variant is its own Optuna parameter; the trial's config gets readout_layer.
        assert set(trial.params) == {"model", f"readout_layer@{variant}", "lora_depth"}
        assert settings["readout_layer"] in ({3, 4} if variant == "wavlm" else {1, 2})
        assert max(settings["lora_layers"]) == settings["readout_layer"]
        seen.add((variant, settings["readout_layer"]))
        study.tell(trial, 0.0)
    assert {variant for variant, _ in seen} == {"wavlm", "whisper"}

    path = tmp_path / "families.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert run(launch_main, ["--config", str(path), "--dry-run"]) == 0
    assert "readout_layer@whisper: int [1, 2] when" in capsys.readouterr().out
    # A layer the Whisper lacks is caught before any trial, naming the model.
    raw["search"]["readout_layer@whisper"] = {"choice": [3], "when": {"model": str(whisper)}}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert run(launch_main, ["--config", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"impossible for UTS01 with model {whisper}" in err and "readout_layer" in err
    # Several ways of searching one setting need their own conditions...
    with pytest.raises(SpaceError, match=r"search.readout_layer@b: readout_layer is searched 2 ways; each needs its own when"):
        parse_spec({**raw, "search": {"readout_layer@a": {"choice": [1], "when": {"lr": 0.1}},
                                      "readout_layer@b": {"choice": [2]}}}, "two.yaml")
    # ... that exclude each other in every trial.
    both = parse_spec({**raw, "fixed": {"lr": 0.1}, "search": {"readout_layer@a": {"choice": [1], "when": {"lr": 0.1}},
                                                               "readout_layer@b": {"choice": [2], "when": {"lr": 0.1}}}},
                      "both.yaml")
    with pytest.raises(Exception, match="two ways of searching readout_layer hold in one trial"):
        SearchSpace(both)(optuna.create_study().ask())
