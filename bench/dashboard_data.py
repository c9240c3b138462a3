"""Dashboard data: a 100k-step run in a fresh SQLite store, fetched, downsampled and drawn.

    .venv/bin/python bench/dashboard_data.py [--steps 100000] [--repeats 5]

Writes a finished run whose series the run-detail page draws (loss, lr, throughput,
online_probe_acc, embed_std: `--steps` points each, as a run logging every step for 100k steps
or every 10 steps for 1M would hold) into a fresh SQLite store (`migrate` in a temporary
SSL_HOME), through `Store.log_metrics` in the batches the training reporter uses. Then, median
of `--repeats`:

- fetch + min/max downsample of one series to 2000 points: `Store.metric_series(run, "loss",
  2000)`, the call the page makes per chart; split into the raw fetch and the downsample.
- rendering the run-detail page `app/views/run.py?run=<id>` with streamlit's AppTest (all its
  charts: five series fetched, downsampled, turned into plotly figures and serialised). The
  first render of the process (imports, store migration check) is reported apart.

Targets: < 1 s for each. The page-vs-fetch ratio printed says how much of a render is data.

PROTOTYPE contender (not product code), interleaved with `metric_series`: the same query read
through the raw DBAPI cursor straight into numpy, then the same `minmax_downsample`; it shows
how much of a fetch is SQLAlchemy's per-row work.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine_report, median, scratch_home  # noqa: E402

MAX_POINTS = 2000  # app/views/run.py MAX_POINTS
TARGET_S = 1.0
KEYS = ("loss", "lr", "throughput", "online_probe_acc", "embed_std")
WRITE_BATCH = 5000


def synthetic_series(key: str, steps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Plausible shapes (decaying noisy loss with spikes, cosine lr, ...): min/max
    downsampling's work does not depend on them, but a flat line would hide bugs."""
    t = steps / steps[-1]
    if key == "loss":
        v = 6.0 * np.exp(-3 * t) + 0.3 + 0.05 * rng.standard_normal(len(t))
        v[rng.integers(0, len(t), 20)] += 2.0  # spikes the downsampling must keep
        return v
    if key == "lr":
        return 0.3 * 0.5 * (1 + np.cos(np.pi * t))
    if key == "throughput":
        return 900 + 50 * rng.standard_normal(len(t))
    if key == "online_probe_acc":
        return np.clip(0.1 + 0.7 * (1 - np.exp(-4 * t)) + 0.02 * rng.standard_normal(len(t)), 0, 1)
    return 0.08 + 0.005 * rng.standard_normal(len(t))


SERIES_SQL = "SELECT step, value FROM metrics WHERE run_id = ? AND key = ? ORDER BY step"


def cursor_series(store, run_id: str, key: str, max_points: int):
    """Prototype: one series via the SQLite DBAPI cursor (no SQLAlchemy rows), downsampled."""
    from sslengine.store import minmax_downsample

    with store.engine.connect() as connection:
        cursor = connection.connection.dbapi_connection.cursor()
        try:
            cursor.execute(SERIES_SQL, (run_id, key))
            rows = cursor.fetchall()
        finally:
            cursor.close()
    data = np.array(rows, dtype=np.float64).reshape(-1, 2)  # NULL (a logged NaN) -> nan
    steps, values = data[:, 0].astype(np.int64), data[:, 1]
    if len(steps) > max_points:
        steps, values = minmax_downsample(steps, values, max_points)
    return steps, values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    home = scratch_home("bench-dash-")
    os.environ["SSL_HOME"] = str(home)
    os.environ["SSL_DATABASE_URL"] = f"sqlite:///{home / 'var' / 'ssl.db'}"
    os.environ["SSL_ARTIFACTS"] = str(home / "var" / "artifacts")
    from sslengine.store import Store, migrate, minmax_downsample

    migrate()
    store = Store.default()
    print(machine_report())
    run_id = store.create_run(
        {"method": "simclr", "train": {"max_steps": args.steps}},
        name="bench 100k steps",
        method="simclr",
        dataset="cifar10",
        backbone="small_resnet",
        total_steps=args.steps,
    )
    rng = np.random.default_rng(0)
    steps = np.arange(1, args.steps + 1)
    t0 = time.perf_counter()
    wall = time.time()
    for key in KEYS:
        values = synthetic_series(key, steps, rng)
        for s in range(0, args.steps, WRITE_BATCH):
            store.log_metrics(
                run_id,
                [
                    (int(st), key, float(v), wall + int(st))
                    for st, v in zip(steps[s : s + WRITE_BATCH], values[s : s + WRITE_BATCH],
                                     strict=True)
                ],
            )  # fmt: skip
    write_s = time.perf_counter() - t0
    store.log_metrics(run_id, [(args.steps, "embed_std_ref", 1 / np.sqrt(128), wall)])
    store.log_metrics(run_id, [(args.steps, "knn_top1_k20", 0.61, wall)])
    store.update_run(run_id, step=args.steps, progress=1.0)
    store.set_status(run_id, "succeeded")
    rows = len(KEYS) * args.steps
    size_mb = (home / "var" / "ssl.db").stat().st_size / 2**20
    print(
        f"wrote {len(KEYS)} series x {args.steps:,} steps = {rows:,} points in {write_s:.1f} s "
        f"({rows / write_s:,.0f} points/s, batches of {WRITE_BATCH}); database {size_mb:.0f} MiB"
    )

    fetch, raw, down, proto = [], [], [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        xs, ys = store.metric_series(run_id, "loss", MAX_POINTS)
        fetch.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        px, py = cursor_series(store, run_id, "loss", MAX_POINTS)
        proto.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        all_x, all_y = store.metric_series(run_id, "loss")
        raw.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        minmax_downsample(np.asarray(all_x), np.asarray(all_y), MAX_POINTS)
        down.append(time.perf_counter() - t0)
    if len(xs) > MAX_POINTS or max(ys) != max(all_y):
        sys.exit("downsampling lost the series' maximum or kept too many points")
    fetch_s = median(fetch)
    print(
        f"fetch + min/max downsample of {args.steps:,} points to {len(xs)}: "
        f"{1e3 * fetch_s:.0f} ms median of {args.repeats} "
        f"(raw fetch {1e3 * median(raw):.0f} ms, downsample alone {1e3 * median(down):.1f} ms)"
    )
    same = list(px) == xs and np.allclose(py, ys)
    print(
        f"prototype DBAPI cursor fetch + same downsample: {1e3 * median(proto):.0f} ms "
        f"(same points: {same}); RATIO metric_series / prototype: "
        f"{fetch_s / median(proto):.1f}x"
    )

    import logging

    from streamlit.testing.v1 import AppTest

    # AppTest runs pages outside a server: streamlit warns "missing ScriptRunContext" per run
    logging.getLogger("streamlit").setLevel(logging.ERROR)

    page = str(ROOT / "app" / "views" / "run.py")
    renders = []
    for i in range(args.repeats + 1):
        at = AppTest.from_file(page, default_timeout=300)
        at.query_params["run"] = run_id
        t0 = time.perf_counter()
        at.run()
        elapsed = time.perf_counter() - t0
        if at.exception:
            sys.exit(f"the run page raised: {at.exception}")
        n_charts = len(at.get("plotly_chart"))
        if i == 0:
            print(f"run page, first render in this process: {elapsed:.2f} s ({n_charts} charts)")
        else:
            renders.append(elapsed)
    render_s = median(renders)
    print(
        f"run page render (AppTest, {n_charts} charts, {len(KEYS)} series of {args.steps:,}): "
        f"{render_s:.2f} s median of {args.repeats} (range {min(renders):.2f}-{max(renders):.2f})"
    )
    print(
        f"RATIO page render / one series fetch+downsample: {render_s / fetch_s:.1f}x; "
        f"TARGETS (< {TARGET_S:.0f} s): fetch+downsample "
        f"{'met' if fetch_s < TARGET_S else 'NOT met'}, page render "
        f"{'met' if render_s < TARGET_S else 'NOT met'}"
    )
    print(machine_report())


if __name__ == "__main__":
    main()
