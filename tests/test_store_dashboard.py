"""The store reads the dashboard pages make, on a SQLite file and on a real PostgreSQL: the
last point of one series over many runs, of many series of one run, the run list's method
filter, and the series / key reads answered without scanning every point."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sqlalchemy import event

from sslengine.store import Store, minmax_downsample


def _new_run(store: Store, **overrides) -> str:
    fields = {"name": "run", "method": "simclr", "dataset": "cifar10", "backbone": "resnet18"}
    fields.update(overrides)
    return store.create_run({"method": fields["method"]}, **fields)


class _Statements:
    """Counts the statements the store sends (the N+1 a list page must not make)."""

    def __init__(self, store: Store) -> None:
        self.engine, self.count = store.engine, 0

    def _on_execute(self, *args) -> None:
        self.count += 1

    def __enter__(self) -> _Statements:
        event.listen(self.engine, "before_cursor_execute", self._on_execute)
        return self

    def __exit__(self, *exc) -> None:
        event.remove(self.engine, "before_cursor_execute", self._on_execute)


def test_last_metric_many_is_one_query_and_matches_last_metric(store: Store) -> None:
    runs = [_new_run(store, name=f"r{i}") for i in range(5)]
    # r0: several points logged out of order; r1: one point; r2: last point NaN;
    # r3: only another key; r4: nothing at all.
    store.log_metrics(
        runs[0], [(30, "knn", 0.5, 0.0), (10, "knn", 0.9, 0.0), (20, "knn", 0.1, 0.0)]
    )
    store.log_metrics(runs[1], [(7, "knn", 0.25, 0.0)])
    store.log_metrics(runs[2], [(1, "knn", 0.3, 0.0), (2, "knn", math.nan, 0.0)])
    store.log_metrics(runs[3], [(5, "loss", 1.0, 0.0)])

    with _Statements(store) as statements:
        last = store.last_metric_many([*runs, "000000000000"], "knn")
    assert statements.count == 1
    assert set(last) == {runs[0], runs[1], runs[2]}
    assert last[runs[0]] == (30, 0.5) and last[runs[1]] == (7, 0.25)
    assert last[runs[2]][0] == 2 and math.isnan(last[runs[2]][1])
    for run_id in runs[:2]:
        assert last[run_id] == store.last_metric(run_id, "knn")
    assert store.last_metric_many([], "knn") == {}
    assert store.last_metric_many(runs, "missing") == {}


def test_last_metric_many_reads_only_the_last_point(store: Store) -> None:
    """A long series per run: the answer comes from an index seek, and is still exact."""
    a, b = _new_run(store), _new_run(store)
    n = 20_000
    store.log_metrics(a, ((s, "loss", float(s), 0.0) for s in range(n)))
    store.log_metrics(b, ((s, "loss", -float(s), 0.0) for s in range(n // 2)))
    assert store.last_metric_many([a, b], "loss") == {
        a: (n - 1, float(n - 1)),
        b: (n // 2 - 1, -float(n // 2 - 1)),
    }


def test_last_metrics_of_one_run_in_one_query(store: Store) -> None:
    run_id, other = _new_run(store), _new_run(store)
    store.log_metrics(run_id, [(s, "loss", 1.0 / (s + 1), 0.0) for s in range(50)])
    store.log_metrics(run_id, [(40, "embed_std_ref", 0.088, 0.0), (3, "lr", 0.3, 0.0)])
    store.log_metrics(run_id, [(49, "knn", math.nan, 0.0)])
    store.log_metrics(other, [(99, "throughput", 900.0, 0.0)])

    wanted = ["loss", "lr", "throughput", "embed_std_ref", "knn", "loss"]
    with _Statements(store) as statements:
        last = store.last_metrics(run_id, wanted)
    assert statements.count == 1
    assert set(last) == {"loss", "lr", "embed_std_ref", "knn"}  # throughput is another run's
    for key in ("loss", "lr", "embed_std_ref"):
        assert last[key] == store.last_metric(run_id, key)
    assert last["knn"][0] == 49 and math.isnan(last["knn"][1])
    assert store.last_metrics(run_id, []) == {}
    assert store.last_metrics(run_id, ["missing"]) == {}
    # more keys than one statement's UNION ALL branches still answer every key
    many = [f"k{i:03d}" for i in range(450)]
    store.log_metrics(other, [(i, key, float(i), 0.0) for i, key in enumerate(many)])
    assert store.last_metrics(other, many) == {key: (i, float(i)) for i, key in enumerate(many)}


def test_list_runs_method_filter(store: Store) -> None:
    a = _new_run(store, method="simclr", name="SimCLR a")
    b = _new_run(store, method="moco", name="moco b")
    c = _new_run(store, method="simclr", name="simclr c", owner="ana")
    store.set_status(c, "running")
    assert [r.id for r in store.list_runs(method="simclr")] == [c, a]
    assert [r.id for r in store.list_runs(method="moco")] == [b]
    assert store.list_runs(method="swav") == []
    assert [r.id for r in store.list_runs(method="simclr", status="queued")] == [a]
    assert [r.id for r in store.list_runs(method="simclr", owner="ana")] == [c]
    # exact, not a substring: "moco" also appears in b's name, "sim" in two methods
    assert store.list_runs(method="sim") == []
    assert [r.id for r in store.list_runs(method="simclr", search="moco")] == []


def test_metric_keys_walks_the_index(store: Store) -> None:
    run_id, other = _new_run(store), _new_run(store)
    keys = ["train/loss", "a", "collapse/std", "Z", "lr", "a b", "knn_top1_k20"]
    store.log_metrics(run_id, [(s, k, float(s), 0.0) for k in keys for s in range(100)])
    store.log_metrics(other, [(0, "zz other", 1.0, 0.0)])
    assert store.metric_keys(run_id) == sorted(keys)
    assert store.metric_keys(other) == ["zz other"]
    assert store.metric_keys(_new_run(store)) == []


def test_metric_series_fast_path_is_exact(store: Store) -> None:
    """The driver-cursor fetch returns what the ORM-row fetch did: ints, floats, NaN, the
    same min/max downsampling, and start_step."""
    run_id = _new_run(store)
    rng = np.random.default_rng(1)
    n = 30_000
    values = rng.normal(size=n)
    values[[5, 12_345]] = math.nan
    values[777] = 50.0
    steps = np.arange(0, 3 * n, 3)
    store.log_metrics(
        run_id, ((int(s), "loss", float(v), 0.0) for s, v in zip(steps, values, strict=True))
    )

    got_steps, got_values = store.metric_series(run_id, "loss")
    assert got_steps == steps.tolist() and all(type(s) is int for s in got_steps[:10])
    np.testing.assert_array_equal(np.array(got_values), values)  # NaN where NaN was logged

    down_steps, down_values = store.metric_series(run_id, "loss", max_points=500)
    ref_steps, ref_values = minmax_downsample(steps, values, 500)
    assert down_steps == ref_steps.tolist()
    np.testing.assert_array_equal(np.array(down_values), ref_values)
    assert 777 * 3 in down_steps and max(v for v in down_values if not math.isnan(v)) == 50.0

    tail_steps, _ = store.metric_series(run_id, "loss", start_step=3 * (n - 3))
    assert tail_steps == steps[-3:].tolist()
    assert store.metric_series(run_id, "loss", max_points=500, start_step=10**9) == ([], [])


@pytest.mark.parametrize("key", ["it's", "100%", "a:b"])
def test_metric_series_keys_with_quotes_and_percent(store: Store, key: str) -> None:
    """The fast path passes the key as a bound parameter on both drivers' parameter styles."""
    run_id = _new_run(store)
    store.log_metrics(run_id, [(1, key, 1.5, 0.0), (2, key, 2.5, 0.0)])
    assert store.metric_series(run_id, key) == ([1, 2], [1.5, 2.5])
    assert store.metric_keys(run_id) == [key]
    assert store.last_metrics(run_id, [key]) == {key: (2, 2.5)}
    assert store.last_metric_many([run_id], key) == {run_id: (2, 2.5)}
