"""Where a run's files live: checkpoints, embeddings, indexes, thumbnails, logs.

One directory per run id. ``SSL_ARTIFACTS`` is a local path (or ``file://`` URL), the default
``$SSL_HOME/var/artifacts``, or any fsspec URL (``s3://bucket/prefix``, ``gcs://...``,
``abfs://...``) for a team whose workers and dashboard run on different hosts.

With a remote URL every host works on a local MIRROR of the tree, ``SSL_ARTIFACTS_CACHE``
(default ``$SSL_HOME/var/artifacts-cache``; keep it the same path on every host, as the
compose file does, since the store records checkpoint paths): training, evaluations and
``torch.load`` / ``np.load(mmap_mode=...)`` / faiss need local files anyway. The remote is the
source of truth between hosts:

- a worker pulls a run's folder before it resumes it (`pull_run_artifacts`), pushes new and
  changed files while it trains (`ArtifactSync`, every ``SSL_ARTIFACTS_SYNC_S`` seconds, in a
  background thread so a slow upload never delays a heartbeat) and once more when it ends;
- the dashboard fetches what it opens (`localize`: one file, or one evaluation folder) the
  first time, so it never downloads checkpoints it does not show;
- deleting a run deletes both copies.

Credentials and endpoint come from the filesystem's own environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` for s3fs) or ``SSL_ARTIFACTS_OPTIONS``, a JSON
object of fsspec storage options (e.g. ``{"endpoint_url": "http://minio:9000"}``); neither is
ever logged. Files still being written (``*.tmp``: checkpoints are written to a temp file and
renamed) are never pushed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Run ids are short hex uuids; anything else (``..``, ``/``) must never reach rmtree.
_SAFE_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def ssl_home() -> Path:
    """Root of the product's local state: env ``SSL_HOME``, default the current directory."""
    return Path(os.environ.get("SSL_HOME") or Path.cwd())


def artifacts_url() -> str | None:
    """The remote fsspec URL of the artifact tree, or None when artifacts are local."""
    configured = os.environ.get("SSL_ARTIFACTS") or ""
    if "://" in configured and not configured.startswith("file://"):
        return configured.rstrip("/")
    return None


def artifacts_root() -> Path:
    """The local artifact tree: env ``SSL_ARTIFACTS`` (a path or ``file://`` URL), default
    ``$SSL_HOME/var/artifacts``; with a remote URL, its local mirror ``SSL_ARTIFACTS_CACHE``
    (default ``$SSL_HOME/var/artifacts-cache``)."""
    configured = os.environ.get("SSL_ARTIFACTS")
    if artifacts_url() is not None:
        cache = os.environ.get("SSL_ARTIFACTS_CACHE")
        return Path(cache) if cache else ssl_home() / "var" / "artifacts-cache"
    if not configured:
        return ssl_home() / "var" / "artifacts"
    return _local_path(configured)


def run_artifact_dir(run_id: str) -> Path:
    """The directory holding everything a run writes; created if missing."""
    path = _join(artifacts_root(), _checked_run_id(run_id))
    _makedirs(path)
    return path


def remove_run_artifacts(run_id: str) -> bool:
    """Delete a run's artifact directory (and its remote copy); returns whether there was one."""
    path = _join(artifacts_root(), _checked_run_id(run_id))
    found = False
    remote = _remote()
    if remote is not None:
        fs, base = remote
        target = f"{base}/{run_id}"
        if fs.exists(target):
            fs.rm(target, recursive=True)
            found = True
    if _exists(path):
        _rmtree(path)
        found = True
    return found


# --------------------------------------------------------------------------- remote mirror


def _remote() -> tuple[Any, str] | None:
    """(fsspec filesystem, base path without protocol) of the remote tree, or None."""
    url = artifacts_url()
    if url is None:
        return None
    import fsspec  # only hosted set-ups with a remote URL need it loaded

    raw = os.environ.get("SSL_ARTIFACTS_OPTIONS") or "{}"
    try:
        options = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"SSL_ARTIFACTS_OPTIONS is not a JSON object: {err}") from None
    if not isinstance(options, dict):
        raise ValueError("SSL_ARTIFACTS_OPTIONS must be a JSON object of fsspec storage options")
    fs, base = fsspec.core.url_to_fs(url, **options)
    return fs, base.rstrip("/")


def _relative(path: Path) -> str | None:
    """`path` relative to the local tree, as a '/'-joined string; None if outside it."""
    try:
        rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(artifacts_root()))
    except ValueError:
        return None
    return rel.as_posix()


def _local_files(folder: Path) -> dict[str, tuple[int, int]]:
    """relative path -> (size, mtime_ns) of the finished files under `folder`."""
    out: dict[str, tuple[int, int]] = {}
    for path in folder.rglob("*"):
        if path.is_file() and not path.name.endswith(".tmp"):
            st = path.stat()
            out[_relative(path) or path.name] = (st.st_size, st.st_mtime_ns)
    return out


def _remote_sizes(fs: Any, base: str, rel: str) -> dict[str, int]:
    """relative path -> size of the files under base/rel on the remote."""
    root = f"{base}/{rel}"
    fs.invalidate_cache()  # another host may have written since this process last listed
    if not fs.exists(root):
        return {}
    found = fs.find(root, detail=True)
    prefix = f"{base}/"
    return {
        name.removeprefix(prefix): int(info.get("size") or 0)
        for name, info in found.items()
        if info.get("type", "file") != "directory"
    }


def push_run_artifacts(run_id: str, pushed: dict[str, tuple[int, int]] | None = None) -> int:
    """Upload a run's new and changed files to the remote tree; returns how many were sent.

    `pushed` (relative path -> (size, mtime_ns) already uploaded) lets a caller that pushes
    repeatedly skip unchanged files without listing the remote; it is updated in place.
    No-op (0) when artifacts are local.
    """
    remote = _remote()
    if remote is None:
        return 0
    fs, base = remote
    folder = _join(artifacts_root(), _checked_run_id(run_id))
    if not folder.is_dir():
        return 0
    if pushed is None:
        pushed = {rel: (size, -1) for rel, size in _remote_sizes(fs, base, run_id).items()}
    sent = 0
    for rel, (size, mtime) in sorted(_local_files(folder).items()):
        done = pushed.get(rel)
        if done is not None and done[0] == size and done[1] in (mtime, -1):
            continue
        fs.makedirs(f"{base}/{rel}".rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(artifacts_root() / rel), f"{base}/{rel}")
        pushed[rel] = (size, mtime)
        sent += 1
    return sent


def pull_run_artifacts(run_id: str, subfolder: str = "") -> int:
    """Download a run's files (or those under `subfolder`) that are missing locally or differ
    in size; returns how many were fetched. No-op (0) when artifacts are local."""
    remote = _remote()
    if remote is None:
        return 0
    fs, base = remote
    rel_root = "/".join(p for p in (_checked_run_id(run_id), subfolder.strip("/")) if p)
    return _download(fs, base, _remote_sizes(fs, base, rel_root))


def _download(fs: Any, base: str, sizes: dict[str, int]) -> int:
    root = artifacts_root()
    fetched = 0
    for rel, size in sizes.items():
        local = root / rel
        if local.is_file() and local.stat().st_size == size:
            continue
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(local.name + ".tmp")
        fs.get_file(f"{base}/{rel}", str(tmp))
        os.replace(tmp, local)  # a reader never sees a half-downloaded file
        fetched += 1
    return fetched


def localize(path: str | os.PathLike[str], refresh: bool = False) -> Path:
    """A local path for `path` (a file or folder in the artifact tree), fetching it from the
    remote tree when it is missing here (or, with `refresh`, when the remote copy's size
    differs: a growing log). Paths outside the tree, and all paths when artifacts are local,
    are returned as they are; a path the remote does not hold either stays missing."""
    path = Path(path)
    remote = _remote()
    rel = _relative(path)
    if remote is None or rel is None or (path.exists() and not refresh):
        return path
    fs, base = remote
    try:
        fs.invalidate_cache()
        if fs.isdir(f"{base}/{rel}"):
            _download(fs, base, _remote_sizes(fs, base, rel))
        elif fs.exists(f"{base}/{rel}"):
            _download(fs, base, {rel: int(fs.size(f"{base}/{rel}") or 0)})
    except OSError as err:
        log.warning("could not fetch %s from the artifact store: %s", rel, err)
    return path


class ArtifactSync:
    """Pushes one run's folder to the remote tree every `interval_s` seconds in a background
    thread, and once more on `stop()`. Does nothing when artifacts are local.

    Upload errors are logged and retried at the next interval; `stop()` raises the last one
    if the final push fails, so a run is not reported done while its files exist on one disk
    only.
    """

    def __init__(self, run_id: str, interval_s: float | None = None):
        self.run_id = run_id
        if interval_s is None:
            interval_s = float(os.environ.get("SSL_ARTIFACTS_SYNC_S", "15"))
        self.interval_s = interval_s
        self.enabled = artifacts_url() is not None
        self._pushed: dict[str, tuple[int, int]] | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def push(self) -> int:
        if not self.enabled:
            return 0
        with self._lock:
            if self._pushed is None:
                self._pushed = {}
                fs, base = _remote()  # type: ignore[misc]
                for rel, size in _remote_sizes(fs, base, self.run_id).items():
                    self._pushed[rel] = (size, -1)
            return push_run_artifacts(self.run_id, self._pushed)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.push()
            except Exception as err:  # noqa: BLE001 - retried next interval, raised on stop()
                log.warning("pushing artifacts of %s failed (will retry): %s", self.run_id, err)

    def start(self) -> ArtifactSync:
        if self.enabled:
            self._thread = threading.Thread(
                target=self._loop, name=f"artifact-sync-{self.run_id}", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> int:
        """Stop the thread and push what is left; returns the files sent by this last push."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self.push()


def _checked_run_id(run_id: str) -> str:
    if not _SAFE_RUN_ID.match(run_id):
        raise ValueError(f"not a valid run id for an artifact path: {run_id!r}")
    return run_id


def _local_path(location: str) -> Path:
    if location.startswith("file://"):
        return Path(location.removeprefix("file://"))
    if "://" in location:
        raise ValueError(f"SSL_ARTIFACTS={location!r} is not a local path")
    return Path(location)


def _join(root: Path, *parts: str) -> Path:
    return root.joinpath(*parts)


def _makedirs(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)


def _exists(path: Path) -> bool:
    return path.exists()


def _rmtree(path: Path) -> None:
    shutil.rmtree(path)
