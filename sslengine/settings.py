"""Where things live on disk, from the environment (embedded defaults under `$SSL_HOME/var`)."""

from __future__ import annotations

import os
from pathlib import Path


def ssl_home() -> Path:
    return Path(os.environ.get("SSL_HOME", os.getcwd())).resolve()


def var_dir() -> Path:
    return ssl_home() / "var"


def cache_dir() -> Path:
    """Decoded-dataset caches (uint8 .npy, memory-mapped)."""
    path = Path(os.environ.get("SSL_CACHE", var_dir() / "cache"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def redis_url() -> str:
    return os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
