"""Shared fixtures: the tiny planted-teacher dataset, made once per test session."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
import torch

from core.cli import quiet_libraries
from core.synthetic import SIZES, generate

# A smaller planted-teacher dataset for tests that train: 2 training stories of 30 TRs.
SMALL = replace(SIZES["tiny"], n_train_stories=2, train_trs=30, val_trs=20, test_trs=25, n_voxels=40)

quiet_libraries()
torch.set_num_threads(2)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine torch's
    thread pool makes their many small ops ~100x slower (seen: story_cnn 0.02 s -> 4 s).
    A module takes it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def feature_cache(tmp_path_factory):
    """Keep the frozen-feature cache of the tests out of the user's home."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["BRAINSWEEP_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """The tiny planted-teacher dataset (see core.synth); treat it as read-only."""
    return generate(tmp_path_factory.mktemp("data") / "tiny", SIZES["tiny"], progress=lambda message: None)


@pytest.fixture(scope="session")
def small_data(tmp_path_factory):
    """:data:`SMALL`, the planted-teacher dataset for training tests; read-only."""
    return generate(tmp_path_factory.mktemp("data") / "small", SMALL, progress=lambda message: None)
