"""Where a run's progress goes: the store (queued runs), a tqdm bar (CLI), or nowhere (rank > 0).

Only rank 0 ever holds a store-backed reporter; the other ranks get `NullReporter`, so they
never touch the store.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Reporter(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None: ...
    def progress(self, step: int, total_steps: int, eta_s: float | None) -> None: ...
    def checkpoint(self, step: int, path: str) -> None: ...
    def eval_result(
        self,
        kind: str,
        metrics: dict[str, Any],
        layer: str | None = None,
        step: int | None = None,
        artifact_path: str | None = None,
    ) -> None: ...
    def should_stop(self) -> bool: ...
    def close(self) -> None: ...


class NullReporter:
    def log(self, step, metrics):
        pass

    def progress(self, step, total_steps, eta_s):
        pass

    def checkpoint(self, step, path):
        pass

    def eval_result(self, kind, metrics, layer=None, step=None, artifact_path=None):
        pass

    def should_stop(self):
        return False

    def close(self):
        pass


class StoreReporter:
    """Writes metrics to the store in batches; a failing database does not stop training.

    Rows that cannot be written are kept (bounded) and retried at the next flush, so a database
    that is briefly unreachable loses nothing; writes are idempotent on (run, step, key), so a
    retried batch never duplicates points.
    """

    def __init__(self, store, run_id: str, max_buffer: int = 1_000_000):
        self.store, self.run_id = store, run_id
        self.host = socket.gethostname()
        self._pending: deque[tuple[int, str, float, float]] = deque(maxlen=max_buffer)

    def _try(self, what: str, fn, *args, **kwargs) -> bool:
        try:
            fn(*args, **kwargs)
            return True
        except Exception as err:  # noqa: BLE001 - the store being down must not kill training
            log.warning("store unavailable while writing %s (%s); will retry", what, err)
            return False

    def log(self, step: int, metrics: dict[str, float]) -> None:
        now = time.time()
        self._pending.extend((step, k, float(v), now) for k, v in metrics.items())
        self.flush()

    def flush(self) -> None:
        if self._pending:
            rows = list(self._pending)
            if self._try("metrics", self.store.log_metrics, self.run_id, rows):
                self._pending.clear()

    def progress(self, step: int, total_steps: int, eta_s: float | None) -> None:
        self._try(
            "progress",
            self.store.update_run,
            self.run_id,
            step=step,
            total_steps=total_steps,
            progress=step / max(1, total_steps),
            eta_seconds=eta_s,
        )
        self._try("heartbeat", self.store.heartbeat, self.run_id, self.host)

    def checkpoint(self, step: int, path: str) -> None:
        self._try("checkpoint", self.store.add_checkpoint, self.run_id, step, path)

    def eval_result(self, kind, metrics, layer=None, step=None, artifact_path=None):
        self.flush()
        self._try(
            "eval result",
            self.store.add_eval_result,
            self.run_id,
            kind=kind,
            metrics=metrics,
            layer=layer,
            checkpoint_step=step,
            artifact_path=artifact_path,
        )

    def should_stop(self) -> bool:
        try:
            return bool(self.store.cancel_requested(self.run_id))
        except Exception:  # noqa: BLE001
            return False

    def close(self, retry_s: float | None = None) -> None:
        """Flush what is left, retrying for `retry_s` (SSL_STORE_RETRY_S, default 120 s)."""
        if retry_s is None:
            retry_s = float(os.environ.get("SSL_STORE_RETRY_S", "120"))
        deadline = time.monotonic() + retry_s
        while True:
            self.flush()
            if not self._pending or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        if self._pending:
            log.error("dropping %d metric rows: store unreachable", len(self._pending))


class TqdmReporter:
    """Wraps another reporter and draws a progress bar (the CLI's `pretrain`)."""

    def __init__(self, inner: Reporter | None = None):
        from tqdm import tqdm

        self.inner = inner or NullReporter()
        self.bar = tqdm(total=0, unit="step", dynamic_ncols=True)

    def log(self, step, metrics):
        self.inner.log(step, metrics)
        shown = {k: f"{v:.4g}" for k, v in metrics.items() if k in ("loss", "lr", "throughput")}
        self.bar.set_postfix(shown)

    def progress(self, step, total_steps, eta_s):
        self.inner.progress(step, total_steps, eta_s)
        self.bar.total = total_steps
        self.bar.n = step
        self.bar.refresh()

    def checkpoint(self, step, path):
        self.inner.checkpoint(step, path)

    def eval_result(self, kind, metrics, layer=None, step=None, artifact_path=None):
        self.inner.eval_result(kind, metrics, layer=layer, step=step, artifact_path=artifact_path)
        self.bar.write(
            f"{kind}: "
            + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        )

    def should_stop(self):
        return self.inner.should_stop()

    def close(self):
        self.bar.close()
        self.inner.close()
