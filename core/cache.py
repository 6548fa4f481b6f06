"""Where brainsweep keeps what it can recompute from the dataset and models.

``$BRAINSWEEP_CACHE`` if set, else ``~/.cache/brainsweep``. Each kind of cached result
has its own folder under it (``features/``, ``nan_voxels/``); deleting any of them only
costs recomputation.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_ENV", "cache_root"]

CACHE_ENV = "BRAINSWEEP_CACHE"


def cache_root() -> Path:
    """``$BRAINSWEEP_CACHE``, or ``~/.cache/brainsweep`` when it is unset or empty."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "brainsweep")
