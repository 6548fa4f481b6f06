"""The library's public API: every name in core.__all__ resolves to the object its module defines."""

from __future__ import annotations

import importlib

import pytest

import core


def test_every_public_name_resolves_to_its_module_object():
    for name in core.__all__:
        module = importlib.import_module(f"core.{core._EXPORTS[name]}")
        assert getattr(core, name) is getattr(module, name), name
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        core.nothing  # noqa: B018
