"""Dashboard data: a 100k-step run in a fresh SQLite store, fetched, downsampled and drawn.

    .venv/bin/python bench/dashboard_data.py [--steps 100000] [--repeats 5] [--runs 200]

Writes a finished run whose series the run-detail page draws (loss, lr, throughput,
online_probe_acc, embed_std: `--steps` points each, as a run logging every step for 100k steps
or every 10 steps for 1M would hold) into a fresh SQLite store (`migrate` in a temporary
SSL_HOME), through `Store.log_metrics` in the batches the training reporter uses. Then, median
of `--repeats`:

- fetch + min/max downsample of one series to 2000 points: `Store.metric_series(run, "loss",
  2000)`, the call the page makes per chart (it reads through the DBAPI cursor); split into
  the raw fetch and the downsample. Interleaved with it, the REFERENCE it replaced: the same
  query read as SQLAlchemy rows (one `Row` per point), then the same `minmax_downsample`.
- the keys the page looks up: `Store.last_metrics(run, keys)` (one statement, an index seek
  per key) and `Store.metric_keys(run)` (a loose index scan), against the REFERENCE
  `SELECT DISTINCT key` that reads every point of the run.
- the Runs page's kNN column over `--runs` runs: `Store.last_metric_many(ids, key)` (one
  statement) against the REFERENCE of one `Store.last_metric` per run.
- rendering the run-detail page `app/views/run.py?run=<id>` with streamlit's AppTest (all its
  charts: five series fetched, downsampled, turned into plotly figures and serialised):
  cold (`st.cache_data` cleared first: every series fetched, what a first viewer waits for)
  and warm (a rerun: the page caches each downsampled series on its last step). The first
  render of the process (imports, store migration check) is reported apart, and so is an
  AppTest render of a one-line page (the harness's own cost, in every render).

Targets: < 1 s for the fetch and for the cold render. The page-vs-fetch ratio printed says
how much of a render is data.
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
# app/views/run.py CHARTED + SHOWN: the keys the page looks up
PAGE_KEYS = (
    "loss", "lr", "throughput", "online_probe_acc", "embed_std", "effective_rank",
    "knn_top1_k20", "embed_std_ref",
)  # fmt: skip


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


def rows_series(store, run_id: str, key: str, max_points: int):
    """REFERENCE: `Store.metric_series` before it read through the DBAPI cursor: the same
    core select, read as SQLAlchemy rows, then the same downsampling."""
    from sqlalchemy import select

    from sslengine.store import minmax_downsample
    from sslengine.store.models import Metric

    m = Metric.__table__
    query = (
        select(m.c.step, m.c.value).where(m.c.run_id == run_id, m.c.key == key).order_by(m.c.step)
    )
    with store.engine.connect() as connection:
        rows = connection.execute(query).all()
    steps = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    values = np.array([r[1] for r in rows], dtype=np.float64)
    if len(steps) > max_points:
        steps, values = minmax_downsample(steps, values, max_points)
    return steps, values


def distinct_keys(store, run_id: str) -> list[str]:
    """REFERENCE: `Store.metric_keys` before the loose index scan (reads every point)."""
    from sqlalchemy import select

    from sslengine.store.models import Metric

    m = Metric.__table__
    with store.engine.connect() as connection:
        keys = connection.execute(select(m.c.key).where(m.c.run_id == run_id).distinct())
        return sorted(keys.scalars())


def interleaved(contenders: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each contender, their order rotating every round."""
    names = list(contenders)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeats):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            t0 = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--runs", type=int, default=200, help="runs in the Runs page column")
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

    fetch, raw, down, ref = [], [], [], []
    for i in range(args.repeats):
        for contender in ("library", "reference") if i % 2 == 0 else ("reference", "library"):
            t0 = time.perf_counter()
            if contender == "library":
                xs, ys = store.metric_series(run_id, "loss", MAX_POINTS)
                fetch.append(time.perf_counter() - t0)
            else:
                rx, ry = rows_series(store, run_id, "loss", MAX_POINTS)
                ref.append(time.perf_counter() - t0)
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
    same = list(rx) == xs and list(ry) == ys
    print(
        f"REFERENCE fetch as SQLAlchemy rows + same downsample: {1e3 * median(ref):.0f} ms "
        f"(same points: {same}); RATIO reference / metric_series: {median(ref) / fetch_s:.1f}x"
    )

    lookups = interleaved(
        {
            "last_metrics": lambda: store.last_metrics(run_id, PAGE_KEYS),
            "metric_keys": lambda: store.metric_keys(run_id),
            "distinct": lambda: distinct_keys(store, run_id),
        },
        max(args.repeats, 9),
    )
    if store.metric_keys(run_id) != distinct_keys(store, run_id):
        sys.exit("metric_keys and SELECT DISTINCT disagree")
    print(
        f"keys of the run ({rows:,} points): last_metrics of the page's {len(PAGE_KEYS)} keys "
        f"{1e3 * median(lookups['last_metrics']):.2f} ms, metric_keys "
        f"{1e3 * median(lookups['metric_keys']):.2f} ms; REFERENCE SELECT DISTINCT key "
        f"{1e3 * median(lookups['distinct']):.1f} ms"
    )

    # the Runs page's kNN column: a few kNN points per run, as evaluations after training write
    others = [
        store.create_run({"method": "simclr"}, name=f"list {i}", method="simclr",
                         dataset="cifar10", backbone="small_resnet")
        for i in range(args.runs - 1)
    ]  # fmt: skip
    for i, other in enumerate(others):
        store.log_metrics(other, [(s, "knn_top1_k20", 0.3 + 0.001 * i, wall) for s in (1, 2, 3)])
    ids = [run_id, *others]
    column = interleaved(
        {
            "many": lambda: store.last_metric_many(ids, "knn_top1_k20"),
            "per run": lambda: [store.last_metric(i, "knn_top1_k20") for i in ids],
        },
        args.repeats,
    )
    many = store.last_metric_many(ids, "knn_top1_k20")
    if [many.get(i) for i in ids] != [store.last_metric(i, "knn_top1_k20") for i in ids]:
        sys.exit("last_metric_many and last_metric disagree")
    print(
        f"Runs page kNN column, {len(ids)} runs: last_metric_many "
        f"{1e3 * median(column['many']):.1f} ms; REFERENCE one last_metric per run "
        f"{1e3 * median(column['per run']):.0f} ms; RATIO "
        f"{median(column['per run']) / median(column['many']):.0f}x"
    )

    import streamlit as st
    from streamlit.logger import set_log_level
    from streamlit.testing.v1 import AppTest

    page = str(ROOT / "app" / "views" / "run.py")
    harness = home / "one_line_page.py"
    harness.write_text("import streamlit as st\n\nst.title('x')\n")

    def render(path: Path | str, clear: bool) -> tuple[float, int]:
        at = AppTest.from_file(str(path), default_timeout=300)
        at.query_params["run"] = run_id
        # outside a server streamlit warns "missing ScriptRunContext" and, on clearing the
        # cache, that it uses an in-memory one; each AppTest resets the level
        set_log_level("error")
        if clear:
            st.cache_data.clear()
        t0 = time.perf_counter()
        at.run()
        elapsed = time.perf_counter() - t0
        if at.exception:
            sys.exit(f"{path} raised: {at.exception}")
        return elapsed, len(at.get("plotly_chart"))

    first, n_charts = render(page, clear=True)
    print(f"run page, first render in this process: {first:.2f} s ({n_charts} charts)")
    renders = interleaved(
        {
            "cold": lambda: render(page, clear=True),
            "warm": lambda: render(page, clear=False),
            "harness": lambda: render(harness, clear=False),
        },
        args.repeats,
    )
    cold, warm = renders["cold"], renders["warm"]
    render_s = median(cold)
    print(
        f"run page render (AppTest, {n_charts} charts, {len(KEYS)} series of {args.steps:,}): "
        f"cold {render_s:.2f} s median of {args.repeats} (range {min(cold):.2f}-{max(cold):.2f}); "
        f"warm (a rerun, series cached) {median(warm):.2f} s "
        f"(range {min(warm):.2f}-{max(warm):.2f}); AppTest of a one-line page "
        f"{median(renders['harness']):.2f} s"
    )
    print(
        f"RATIO cold page render / one series fetch+downsample: {render_s / fetch_s:.1f}x; "
        f"TARGETS (< {TARGET_S:.0f} s): fetch+downsample "
        f"{'met' if fetch_s < TARGET_S else 'NOT met'}, cold page render "
        f"{'met' if render_s < TARGET_S else 'NOT met'}"
    )
    print(machine_report())


if __name__ == "__main__":
    main()
