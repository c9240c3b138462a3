"""Checkpoints: everything a resumed run needs to continue exactly, loaded with weights_only."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from sslengine.store.artifacts import localize


def checkpoint_path(directory: Path, step: int) -> Path:
    return Path(directory) / f"step_{step:08d}.pt"


def save_checkpoint(state: dict[str, Any], directory: Path, step: int) -> Path:
    """Write atomically (temp file + rename) so a crash mid-write never leaves a torn file.

    On a full disk or an unwritable folder the OSError propagates with its message; earlier
    checkpoints are untouched because nothing is ever overwritten in place.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(directory, step)
    tmp = path.with_suffix(".pt.tmp")
    # Serialise in memory, then write with plain file I/O: a full disk then surfaces as the
    # kernel's ENOSPC ("No space left on device") instead of torch's opaque zip-writer error.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    try:
        with open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise OSError(err.errno, f"cannot write checkpoint {path}: {err.strerror}") from err
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with weights_only=True: a checkpoint can never execute code on load. A checkpoint
    of a remote artifact tree that is not on this host yet is fetched first."""
    path = localize(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location=map_location, weights_only=True)


def latest_checkpoint(directory: Path) -> Path | None:
    files = sorted(Path(directory).glob("step_*.pt")) if Path(directory).is_dir() else []
    return files[-1] if files else None
