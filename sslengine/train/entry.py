"""One rank of a run: `python -m sslengine.train.entry --run-id ID --workdir DIR [--resume P]`.

Started by `sslengine.train.launch` (directly for one process, through torchrun for several).
Only rank 0 talks to the store; every rank reads the config from `DIR/config.json`, which the
supervisor wrote. A rank that fails writes its traceback to `DIR/error_rank<R>.txt` so the
supervisor can report the failing rank's own error.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from pathlib import Path

from sslengine.config import parse_config

EXIT_CANCELLED = 3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--run-id", required=True)
    p.add_argument("--workdir", required=True, type=Path)
    p.add_argument("--resume", type=Path, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from sslengine.train.lifeline import die_with_parent

    die_with_parent()  # a rank never outlives its launcher (torchrun or the supervisor)

    import json

    from sslengine.train.loop import Cancelled, init_distributed, pretrain

    ctx = init_distributed()
    try:
        cfg = parse_config(json.loads((args.workdir / "config.json").read_text()))
        reporter = None
        if ctx.is_main:
            from sslengine.store import Store
            from sslengine.train.reporter import StoreReporter

            reporter = StoreReporter(Store.default(), args.run_id)
        try:
            result = pretrain(
                cfg,
                args.workdir / "checkpoints",
                reporter=reporter,
                ctx=ctx,
                resume_from=args.resume,
            )
        finally:
            if reporter is not None:
                reporter.close()
        logging.info("finished: %s", result)
        return 0
    except Cancelled as c:
        logging.info("%s", c)
        return EXIT_CANCELLED
    except BaseException:
        text = traceback.format_exc()
        (args.workdir / f"error_rank{ctx.rank}.txt").write_text(text)
        sys.stderr.write(text)
        return 1
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
