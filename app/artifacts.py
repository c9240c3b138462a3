"""Reading what runs and evaluations left on disk, for the pages (see docs/eval-contract.md).

Nothing here computes a result: it picks store rows, opens `.npy` / `.json` files (memory-mapped,
never pickled) and finds thumbnails. Reads are cached on (path, mtime), so a rerun of a page
does not reopen files, and an evaluation written again under the same folder is picked up.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from sslengine.store import EvalResultRecord
from sslengine.store.artifacts import localize

# Backbone taps in network order: the x axis of the layer-wise probe chart.
LAYER_ORDER = ("conv1", "layer1", "layer2", "layer3", "layer4", "pooled")


class ArtifactMissing(FileNotFoundError):
    """An evaluation row whose folder or file is gone (deleted, or another host's disk)."""


# --------------------------------------------------------------------------- logs


def tail_lines(path: str | os.PathLike[str], n: int = 100, block: int = 8192) -> list[str]:
    """The last ``n`` lines of a text file, read backwards in blocks (a log can be GBs).
    A log in a remote artifact tree is fetched again when it has grown."""
    path = localize(path, refresh=True)
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        end = f.tell()
        data = b""
        # n newlines give n - 1 complete lines after the first: read until n + 1 are seen
        while end > 0 and data.count(b"\n") <= n:
            start = max(0, end - block)
            f.seek(start)
            data = f.read(end - start) + data
            end = start
    lines = data.decode("utf-8", errors="replace").splitlines()
    return lines[-n:] if n > 0 else []


# --------------------------------------------------------------------------- eval rows


def layer_rank(layer: str | None) -> tuple[int, str]:
    """Sort key putting taps in network order, unknown names after them."""
    name = layer or ""
    return (LAYER_ORDER.index(name), name) if name in LAYER_ORDER else (len(LAYER_ORDER), name)


def newest_per_key(rows: Iterable[EvalResultRecord]) -> list[EvalResultRecord]:
    """One row per (run, kind, checkpoint_step, layer): the last recorded (an eval run again
    replaces the earlier result instead of being drawn twice)."""
    latest: dict[tuple, EvalResultRecord] = {}
    for row in rows:
        k = (row.run_id, row.kind, row.checkpoint_step, row.layer)
        if k not in latest or row.id > latest[k].id:
            latest[k] = row
    return sorted(latest.values(), key=lambda r: (r.run_id, r.checkpoint_step or -1, r.id))


def latest_step_rows(rows: Iterable[EvalResultRecord]) -> list[EvalResultRecord]:
    """Per run, the rows of its latest evaluated checkpoint step, taps in network order."""
    rows = newest_per_key(rows)
    last: dict[str, int] = {}
    for r in rows:
        step = r.checkpoint_step if r.checkpoint_step is not None else -1
        last[r.run_id] = max(last.get(r.run_id, -1), step)
    keep = [r for r in rows if (r.checkpoint_step if r.checkpoint_step is not None else -1)
            == last[r.run_id]]  # fmt: skip
    return sorted(keep, key=lambda r: (r.run_id, layer_rank(r.layer)))


def steps_of(rows: Sequence[EvalResultRecord]) -> list[int]:
    """Distinct checkpoint steps, newest first."""
    return sorted({r.checkpoint_step for r in rows if r.checkpoint_step is not None}, reverse=True)


def layers_of(rows: Sequence[EvalResultRecord]) -> list[str]:
    return sorted({r.layer or "" for r in rows}, key=layer_rank)


def row_for(
    rows: Sequence[EvalResultRecord], step: int | None, layer: str | None
) -> EvalResultRecord | None:
    matching = [r for r in rows if r.checkpoint_step == step and (r.layer or "") == (layer or "")]
    return max(matching, key=lambda r: r.id) if matching else None


# --------------------------------------------------------------------------- artifact files


def artifact_folder(row: EvalResultRecord) -> Path:
    if not row.artifact_path:
        raise ArtifactMissing(f"evaluation {row.id} ({row.kind}) has no artifact folder")
    folder = localize(row.artifact_path)  # fetched once from a remote artifact tree
    if not folder.is_dir():
        raise ArtifactMissing(
            f"the artifact folder of evaluation {row.id} is missing: {folder} "
            "(deleted, or written on another host's disk)"
        )
    return folder


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        raise ArtifactMissing(f"missing file {path}") from None


@st.cache_resource(max_entries=32, show_spinner=False)
def _npy(path: str, mtime_ns: int) -> np.ndarray:
    # mmap: embeddings of a large split need not fit in the app's memory; only rows that are
    # drawn are read. allow_pickle=False: an artifact can never run code in the app.
    return np.load(path, mmap_mode="r", allow_pickle=False)


@st.cache_data(max_entries=64, show_spinner=False)
def _json(path: str, mtime_ns: int) -> Any:
    return json.loads(Path(path).read_text())


def load_npy(folder: Path, name: str) -> np.ndarray:
    path = folder / name
    return _npy(str(path), _mtime(path))


def load_json(folder: Path, name: str) -> Any:
    path = folder / name
    return _json(str(path), _mtime(path))


def has_file(folder: Path, name: str) -> bool:
    return (folder / name).is_file()


# --------------------------------------------------------------------------- dataset images


@st.cache_data(max_entries=16, show_spinner=False, ttl=600)
def class_names(dataset_cfg_json: str) -> list[str]:
    """Class names of a run's dataset (empty when the dataset cannot be read here)."""
    from sslengine.data.datasets import dataset_info
    from sslengine.data.paths import dataset_roots

    cfg = json.loads(dataset_cfg_json)
    try:
        return list(dataset_info(cfg.get("name"), cfg.get("root"), dataset_roots())["classes"])
    except Exception:  # noqa: BLE001 - names are a nicety; labels stay numbers without them
        return []


def label_text(label: int, names: Sequence[str]) -> str:
    if label < 0:
        return "unlabelled"
    return f"{names[label]}" if label < len(names) else str(label)


def thumbnail_library_missing() -> str | None:
    """Why thumbnails cannot be shown here, or None when they can."""
    try:
        from sslengine.eval.thumbnails import thumbnail_path  # noqa: F401
    except ImportError as err:
        return f"thumbnails need sslengine.eval.thumbnails ({err})"
    return None


def thumbnail(dataset_cfg: dict[str, Any], split: str, index: int) -> str | None:
    """Path of the PNG thumbnail of image ``index`` of the split (rendered from the decoded
    dataset cache on first use); None when it cannot be produced on this host."""
    try:
        from sslengine.config import DatasetConfig
        from sslengine.eval.thumbnails import thumbnail_path

        path = thumbnail_path(DatasetConfig.model_validate(dataset_cfg), split, int(index))
    except Exception:  # noqa: BLE001 - one missing image must not break a whole gallery
        return None
    return str(path) if Path(path).is_file() else None


def show_gallery(
    items: Sequence[tuple[int, str]],
    dataset_cfg: dict[str, Any],
    split: str,
    columns: int = 8,
) -> int:
    """Thumbnails of dataset images ``(index, caption)`` in a grid; returns how many showed."""
    missing = thumbnail_library_missing()
    if missing:
        st.info(f"Images cannot be shown: {missing}.")
        return 0
    shown = 0
    for start in range(0, len(items), columns):
        cols = st.columns(columns)
        for col, (index, caption) in zip(cols, items[start : start + columns], strict=False):
            img = thumbnail(dataset_cfg, split, index)
            with col:
                if img is None:
                    st.caption(f"#{index}: image unavailable")
                else:
                    st.image(img, caption=caption, width="stretch")
                    shown += 1
    return shown
