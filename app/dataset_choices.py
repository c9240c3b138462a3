"""What the Launch page offers as datasets: the built-in one plus what lies in the data roots.

Only names are listed here (one directory read per root and per top-level folder); counting
images is ``sslengine.data.datasets.dataset_info``'s job, asked for the chosen entry only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sslengine.data.datasets import is_archive

BUILT_IN_LABEL = "digits (built in)"


@dataclass(frozen=True)
class DatasetChoice:
    label: str  # what the selectbox shows
    name: str  # DatasetConfig.name
    root: str | None  # DatasetConfig.root, relative to its data root (portable across hosts)


def _kind(path: Path) -> str:
    # Archives are read only by the CIFAR-10 loader; a folder is an ImageFolder tree unless
    # its name says CIFAR (the loader then also accepts the torchvision batch layout).
    if is_archive(path) or "cifar" in path.name.lower():
        return "cifar10"
    return "imagefolder"


def dataset_choices(roots: Sequence[Path]) -> list[DatasetChoice]:
    """The built-in digits, then every folder and archive at the top of each root, and the
    archives one level below (``cifar10/cifar10-jpg.tar.gz``), sorted by path per root."""
    out = [DatasetChoice(BUILT_IN_LABEL, "digits", None)]
    seen: set[str] = set()
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        try:
            top = sorted(p for p in root.iterdir() if not p.name.startswith("."))
        except OSError:
            continue
        for entry in top:
            found = []
            if entry.is_dir():
                found.append(entry)
                try:
                    found += sorted(
                        p for p in entry.iterdir() if not p.name.startswith(".") and is_archive(p)
                    )
                except OSError:
                    pass
            elif is_archive(entry):
                found.append(entry)
            for path in found:
                rel = path.relative_to(root).as_posix()
                if rel in seen:  # the same relative path in two roots resolves to the first
                    continue
                seen.add(rel)
                suffix = "/" if path.is_dir() else ""
                out.append(DatasetChoice(f"{rel}{suffix} ({root})", _kind(path), rel))
    return out
