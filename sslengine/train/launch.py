"""Start the ranks of one run: in this process for one device, through torchrun for several.

`python -m sslengine.train.launch --run-id ID --workdir DIR --devices auto|N [--resume P]
 [--nnodes n --node-rank k --rdzv-endpoint host:port]`

Run by the supervisor as the leader of a fresh process group, so cancelling the run can signal
every rank at once. Multi-node runs use torchrun's c10d rendezvous (see README).
"""

from __future__ import annotations

import argparse
import os
import sys


class DeviceError(ValueError):
    """More devices asked for than this host has."""


def available_devices() -> tuple[int, str]:
    """(count, kind). Only called in the launcher process, never in the Celery worker."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.device_count(), "cuda"
    return os.cpu_count() or 1, "cpu"


def resolve_devices(requested: str | int, available: int, kind: str) -> int:
    if requested in ("auto", None):
        return available if kind == "cuda" else 1
    n = int(requested)
    if n < 1:
        raise DeviceError(f"train.devices must be at least 1, got {n}")
    if n > available:
        raise DeviceError(
            f"train.devices asks for {n} processes but this host has {available} {kind} device(s)"
        )
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--run-id", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--devices", default="1")
    p.add_argument("--resume", default=None)
    p.add_argument("--nnodes", type=int, default=1)
    p.add_argument("--node-rank", type=int, default=0)
    p.add_argument("--rdzv-endpoint", default=None)
    args = p.parse_args(argv)

    count, kind = available_devices()
    try:
        nproc = resolve_devices(args.devices, count, kind)
    except DeviceError as err:
        sys.stderr.write(f"error: {err}\n")
        with open(os.path.join(args.workdir, "error_rank0.txt"), "w") as f:
            f.write(str(err))
        return 2
    entry_args = ["--run-id", args.run_id, "--workdir", args.workdir]
    if args.resume:
        entry_args += ["--resume", args.resume]
    if nproc == 1 and args.nnodes == 1:
        from sslengine.train.entry import main as entry_main

        return entry_main(entry_args)

    from torch.distributed.run import main as torchrun

    rdzv = (
        ["--standalone"]
        if args.nnodes == 1
        else [
            "--nnodes",
            str(args.nnodes),
            "--node-rank",
            str(args.node_rank),
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            args.rdzv_endpoint,
            "--rdzv-id",
            args.run_id,
        ]
    )
    try:
        torchrun(
            [
                *rdzv,
                "--nproc-per-node",
                str(nproc),
                "--max-restarts",
                "0",
                "-m",
                "sslengine.train.entry",
                *entry_args,
            ]
        )
    except SystemExit as e:
        return int(e.code or 0)
    except Exception as err:  # torchrun raises ChildFailedError when a rank dies
        sys.stderr.write(f"error: a rank failed: {err}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
