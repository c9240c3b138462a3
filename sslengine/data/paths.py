"""Which folders a run may read data from, and confinement of user-given paths to them.

A dataset root typed into the dashboard is untrusted input: a worker must not be talked into
reading ``/etc`` or another team's folder. Every path is resolved with its symlinks followed
(``Path.resolve(strict=True)``) and must land inside one of the configured roots, so neither
``..`` nor a symlink planted inside a root can escape it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from sslengine.settings import ssl_home

__all__ = ["PathNotAllowedError", "dataset_roots", "is_within", "resolve_within_roots"]


class PathNotAllowedError(ValueError):
    """A path that resolves outside every configured dataset root."""


def dataset_roots() -> list[Path]:
    """The folders datasets may be read from.

    ``SSL_DATASET_ROOTS`` (``os.pathsep``-separated) when set; otherwise ``$SSL_HOME/data`` and,
    if it exists, ``$SSL_HOME/../shared/datasets`` (where the offline copies live in CI and on
    the team's machines). Roots are returned resolved; a root that does not exist yet is kept
    (it may be created later) but nothing can be found inside it until it does.
    """
    env = os.environ.get("SSL_DATASET_ROOTS")
    if env:
        parts = [p for p in env.split(os.pathsep) if p.strip()]
        return [Path(p).expanduser().resolve() for p in parts]
    home = ssl_home()
    roots = [(home / "data").resolve()]
    shared = (home / ".." / "shared" / "datasets").resolve()
    if shared.is_dir():
        roots.append(shared)
    return roots


def is_within(path: Path, root: Path) -> bool:
    """True when ``path`` equals ``root`` or lies below it (both already resolved)."""
    return path == root or root in path.parents


def resolve_within_roots(path: str | os.PathLike[str], roots: Sequence[Path]) -> Path:
    """Resolve ``path`` (symlinks followed) and check it lies inside one of ``roots``.

    A relative path is tried against each root in order (the first existing match wins), so a
    config can say ``root: cifar10`` and mean ``<data root>/cifar10``; an absolute path is taken
    as is. Raises ``PathNotAllowedError`` naming the path and the roots when the resolved path
    is outside all of them, and ``FileNotFoundError`` naming the path when it does not exist
    (but would be inside a root).
    """
    if not roots:
        raise PathNotAllowedError(f"no dataset roots are configured, so '{path}' is not allowed")
    resolved_roots = [Path(r).expanduser().resolve() for r in roots]
    raw = Path(path).expanduser()
    candidates = [raw] if raw.is_absolute() else [r / raw for r in resolved_roots]
    roots_text = ", ".join(str(r) for r in resolved_roots)
    for candidate in candidates:
        try:
            real = candidate.resolve(strict=True)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if any(is_within(real, r) for r in resolved_roots):
            return real
        # Outside: refuse even if a later candidate would have matched (a relative path with
        # `..` that escapes its first root is an attempt, not a typo).
        raise PathNotAllowedError(
            f"path '{path}' resolves to '{real}', outside the allowed dataset roots: {roots_text}"
        )
    # Nothing exists. Check confinement lexically first so the error does not reveal whether a
    # path outside the roots exists.
    for candidate in candidates:
        loose = candidate.resolve(strict=False)
        if any(is_within(loose, r) for r in resolved_roots):
            raise FileNotFoundError(f"dataset path '{path}' does not exist (looked at '{loose}')")
    raise PathNotAllowedError(f"path '{path}' is outside the allowed dataset roots: {roots_text}")
