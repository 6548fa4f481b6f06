"""``--help`` prints at once: the commands import torch, transformers, Ray and MLflow only to run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "ray", "mlflow")


@pytest.mark.parametrize("command", ["core.train", "sweeper.launch"])
def test_help_loads_no_heavy_library(command):
    # What `python -m <command> --help` runs, then the heavy libraries that got loaded.
    script = (f"import runpy, sys\nsys.argv = ['{command}', '--help']\n"
              f"try:\n    runpy.run_module('{command}', run_name='__main__')\nexcept SystemExit:\n    pass\n"
              f"print('LOADED', sorted(set({HEAVY!r}) & set(sys.modules)))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120, check=True).stdout
    assert "usage: python -m" in out
    assert out.splitlines()[-1] == "LOADED []", out.splitlines()[-1]


def test_help_lists_settings_and_search_spaces():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    train = subprocess.run([sys.executable, "-m", "core.train", "--help"], capture_output=True, text=True, env=env, check=True).stdout
    launch = subprocess.run([sys.executable, "-m", "sweeper.launch", "--help"], capture_output=True, text=True, env=env, check=True).stdout
    assert "lora_rank" in train and "readout_layer" in train
    assert "paper" in launch and "demo" in launch
