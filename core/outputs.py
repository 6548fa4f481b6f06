"""Writing run outputs so that a crash never leaves a half-written folder.

A run writes into a temporary folder beside its output folder and moves it into place
only when everything is written; a previous output folder is replaced at that moment.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np


@contextmanager
def atomic_dir(out: str | os.PathLike):
    """Yield a temporary folder that becomes ``out`` when the block ends without error.

    On an error the temporary folder is removed and ``out`` is left as it was.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then move it into place.

    ``path`` is either the old file or the complete new one, never half-written; on an
    error the temporary file is removed and the error raised.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _jsonable(value):
    """JSON with NaN written as null (strict JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: str | os.PathLike, data: dict) -> None:
    Path(path).write_text(json.dumps(_jsonable(data), indent=2, allow_nan=False) + "\n")


def write_voxel_results(path: str | os.PathLike, arrays: dict[str, np.ndarray], attrs: dict | None = None) -> None:
    """Per-voxel results (each array of shape (n_voxels,)) as HDF5 datasets."""
    with h5py.File(path, "w") as f:
        for name, values in arrays.items():
            f[name] = np.asarray(values)
        for key, value in (attrs or {}).items():
            f.attrs[key] = json.dumps(_jsonable(value)) if isinstance(value, (dict, list, tuple)) else value
