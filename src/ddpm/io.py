"""Output files: a writable-folder check before any work, and atomic writes (temporary file, then
``os.replace``), so an interrupted process never leaves a half-written JSON or npz."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


def check_writable(
    out_dir: str | os.PathLike, option: str = "out_dir", fix: str = "Pass out_dir=A_WRITABLE_FOLDER."
) -> Path:
    """Create ``out_dir`` and check that files can be written there, before any sampling (or training).

    ``option`` names the setting in the error and ``fix`` says what to do (train.py: ``paths.output_dir``).
    """
    out = Path(str(out_dir)).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise PermissionError(
            f"{option}={str(out_dir)!r} cannot be created or written: not writable ({type(e).__name__}: {e}). {fix}"
        ) from e
    return out


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` as JSON atomically (a temporary file in the same folder, then ``os.replace``)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def atomic_savez(path: Path, **arrays) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npz")
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
