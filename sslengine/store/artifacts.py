"""Where a run's files live: checkpoints, embeddings, indexes, thumbnails, logs.

One directory per run id under ``artifacts_root()``. Only local paths for now; every
filesystem operation goes through the small private functions below, so an fsspec URL
(``s3://bucket/prefix``) can later be supported by changing those alone.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

# Run ids are short hex uuids; anything else (``..``, ``/``) must never reach rmtree.
_SAFE_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def ssl_home() -> Path:
    """Root of the product's local state: env ``SSL_HOME``, default the current directory."""
    return Path(os.environ.get("SSL_HOME") or Path.cwd())


def artifacts_root() -> Path:
    """Env ``SSL_ARTIFACTS`` (a path or ``file://`` URL), default ``$SSL_HOME/var/artifacts``."""
    configured = os.environ.get("SSL_ARTIFACTS")
    if not configured:
        return ssl_home() / "var" / "artifacts"
    return _local_path(configured)


def run_artifact_dir(run_id: str) -> Path:
    """The directory holding everything a run writes; created if missing."""
    path = _join(artifacts_root(), _checked_run_id(run_id))
    _makedirs(path)
    return path


def remove_run_artifacts(run_id: str) -> bool:
    """Delete a run's artifact directory; returns whether there was one."""
    path = _join(artifacts_root(), _checked_run_id(run_id))
    if not _exists(path):
        return False
    _rmtree(path)
    return True


def _checked_run_id(run_id: str) -> str:
    if not _SAFE_RUN_ID.match(run_id):
        raise ValueError(f"not a valid run id for an artifact path: {run_id!r}")
    return run_id


def _local_path(location: str) -> Path:
    if location.startswith("file://"):
        return Path(location.removeprefix("file://"))
    if "://" in location:
        raise NotImplementedError(
            f"SSL_ARTIFACTS={location!r}: only local paths and file:// URLs are supported yet"
        )
    return Path(location)


def _join(root: Path, *parts: str) -> Path:
    return root.joinpath(*parts)


def _makedirs(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)


def _exists(path: Path) -> bool:
    return path.exists()


def _rmtree(path: Path) -> None:
    shutil.rmtree(path)
