"""Process start: the imports every worker, launcher, rank and CLI call pays before any work.

Contenders, each a fresh `python -c` (interleaved, order rotated every round, median of
`--rounds`):
- library: `import sslengine.methods, sslengine.train.loop, tasks.submit` and build the small
  ResNet, as a training process does;
- REFERENCE +torchvision: the same after `import torchvision` (what every such process imported
  before the small ResNet got its own BasicBlock: torchvision imports torch._dynamo);
- torch only: `import torch`, the floor;
each with Python's bytecode cache on and, as `nocache`, with PYTHONDONTWRITEBYTECODE=1 (the
environment of some CI machines: every process recompiles the library).

    .venv/bin/python bench/process_start.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_report  # noqa: E402

LIBRARY = (
    "import sslengine.methods, sslengine.train.loop, tasks.submit;"
    "from sslengine.models import build_backbone; build_backbone('small_resnet', cifar_stem=True)"
)
CONTENDERS = {
    "library": LIBRARY,
    "REFERENCE +torchvision": "import torchvision;" + LIBRARY,
    "torch only": "import torch",
}


def run_once(code: str, bytecode_cache: bool) -> float:
    env = dict(os.environ)
    if bytecode_cache:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    t0 = time.perf_counter()
    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=root)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    print(machine_report())
    keys = [(name, cache) for name in CONTENDERS for cache in (True, False)]
    run_once(LIBRARY, True)  # write the bytecode cache once, as the first process of a run does
    times: dict[tuple[str, bool], list[float]] = {k: [] for k in keys}
    for r in range(args.rounds):
        for name, cache in keys[r % len(keys) :] + keys[: r % len(keys)]:
            times[(name, cache)].append(run_once(CONTENDERS[name], cache))
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med[("library", True)]
    print(f"\nmedian of {args.rounds} fresh processes, seconds (ratio to library, cache on):")
    for name, cache in keys:
        label = f"{name}{'' if cache else ', nocache'}"
        print(f"  {label:34s} {med[(name, cache)]:6.2f} s   {med[(name, cache)] / base:5.2f}x")
    saved = med[("REFERENCE +torchvision", False)] - base
    print(f"\nsaved per process against the old imports without a bytecode cache: {saved:.2f} s")
    target = med[("REFERENCE +torchvision", True)] / base
    print(f"target: REFERENCE / library >= 1.3 ... {'met' if target >= 1.3 else 'NOT met'}")
    print(machine_report())


if __name__ == "__main__":
    main()
