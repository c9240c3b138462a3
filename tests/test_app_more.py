"""The evaluation pages (layer-wise probes, clusters, retrieval, embeddings) against a run
evaluated by the real evaluation library, and the app's small helpers against independent
computations."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from sslengine.store import EvalResultRecord, Store

PAGES = str(Path(__file__).resolve().parent.parent / "app" / "views")
TAPS = ("conv1", "layer1", "layer2", "layer3", "layer4", "pooled")


@pytest.fixture(scope="session")
def evaluated_run(finished_run):
    """`finished_run` evaluated as the queue would: probes at two checkpoints (so the per-layer
    curve over training has two points), a retrieval index and k-means clusters."""
    from sslengine.eval.jobs import run_evaluation

    store = Store.default()
    if not store.list_eval_results(finished_run, kind="clusters"):
        steps = [c.step for c in store.list_checkpoints(finished_run)]
        probe = {"epochs": 2, "target_dim": 2048}
        for step in (steps[len(steps) // 2], steps[-1]):
            run_evaluation(store, finished_run, "probe", step, params=probe, device="cpu")
        run_evaluation(store, finished_run, "retrieval", device="cpu")
        run_evaluation(store, finished_run, "clusters", device="cpu")
    return finished_run


def _page(name: str, **params: str) -> AppTest:
    at = AppTest.from_file(f"{PAGES}/{name}.py", default_timeout=60)
    for k, v in params.items():
        at.query_params[k] = v
    return at


def _figure(at: AppTest, key_fragment: str) -> dict:
    chart = next(c for c in at.get("plotly_chart") if key_fragment in c.proto.id)
    return json.loads(chart.proto.spec)


def _array(value) -> np.ndarray:
    """A plotly JSON array: a list, or plotly 6's typed array {dtype, bdata (base64), shape}."""
    if isinstance(value, dict) and "bdata" in value:
        import base64

        out = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        return out.reshape([int(v) for v in str(shape).split(",")]) if shape else out
    return np.asarray(value)


def _texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def _captions(at: AppTest) -> list[str]:
    return [c for img in at.get("image") for c in img.captions]


def _row(store: Store, run_id: str, kind: str) -> EvalResultRecord:
    return store.list_eval_results(run_id, kind=kind)[-1]


# ---------------------------------------------------------------------------- layer-wise


@pytest.mark.integration
def test_layers_page_draws_probe_accuracy_per_layer_and_over_training(evaluated_run):
    store = Store.default()
    rows = store.list_eval_results(evaluated_run, kind="probe")
    last = max(r.checkpoint_step for r in rows)
    at = _page("layers", runs=evaluated_run, run=evaluated_run)
    at.run()
    assert not at.exception, at.exception
    fig = _figure(at, "layers_chart")
    assert len(fig["data"]) == 1
    trace = fig["data"][0]
    assert trace["x"] == list(TAPS)
    expected = {r.layer: 100 * r.metrics["top1"] for r in rows if r.checkpoint_step == last}
    assert trace["y"] == pytest.approx([expected[t] for t in TAPS])

    over = _figure(at, "layer_steps_chart")
    steps = sorted({r.checkpoint_step for r in rows})
    assert [t["name"] for t in over["data"]] == list(TAPS)
    for t in over["data"]:
        assert t["x"] == [str(s) for s in steps]
        want = {r.checkpoint_step: 100 * r.metrics["top1"] for r in rows if r.layer == t["name"]}
        assert t["y"] == pytest.approx([want[s] for s in steps])


@pytest.mark.integration
def test_eval_pages_without_results_explain_how_to_get_them(ssl_home, tmp_path, monkeypatch):
    from app.state import store as app_store
    from sslengine.store import migrate

    monkeypatch.setenv("SSL_DATABASE_URL", f"sqlite:///{tmp_path / 'no-evals.db'}")
    migrate()
    app_store.clear()
    try:
        Store.default().create_run(
            {}, name="x", method="simclr", dataset="digits", backbone="small_resnet"
        )
        for name, text in (
            ("layers", "No linear-probe results yet"),
            ("clusters", "No clustering results yet"),
            ("retrieval", "No retrieval index yet"),
            ("embeddings", "No stored embeddings yet"),
        ):
            at = _page(name)
            at.run()
            assert not at.exception, at.exception
            assert text in _texts(at.info)
    finally:
        app_store.clear()


# ---------------------------------------------------------------------------- clusters


@pytest.mark.integration
def test_clusters_page_histogram_gallery_and_heatmap(evaluated_run):
    store = Store.default()
    row = _row(store, evaluated_run, "clusters")
    folder = Path(row.artifact_path)
    counts = json.loads((folder / "usage.json").read_text())["counts"]
    top = json.loads((folder / "top_images.json").read_text())
    at = _page("clusters", run=evaluated_run)
    at.run()
    assert not at.exception, at.exception
    hist = _figure(at, "usage_chart")
    assert hist["data"][0]["y"] == counts
    assert hist["layout"]["shapes"][0]["y0"] == pytest.approx(sum(counts) / len(counts))
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Clusters K"] == str(len(counts))
    assert metrics["Dead"] == str(sum(c == 0 for c in counts)) == str(row.metrics["dead"])
    assert metrics["Dominant"] == str(row.metrics["dominant"])

    # the default cluster is the most used one; its gallery shows its recorded top images
    biggest = int(np.argmax(counts))
    assert at.query_params["cluster"] == str(biggest)
    shown = [c.split(" · ")[0] for c in _captions(at)]
    assert shown == [f"#{i}" for i in top[str(biggest)]]

    heat = _figure(at, "similarity_chart")
    c = np.load(folder / "centroids.npy").astype(np.float64)
    expected = [[float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b)) for b in c] for a in c]
    assert _array(heat["data"][0]["z"]) == pytest.approx(np.asarray(expected), abs=1e-6)

    other = next(i for i, n in enumerate(counts) if n > 0 and i != biggest)
    at.selectbox(key="cluster").set_value(other).run()
    assert at.query_params["cluster"] == str(other)
    assert [c.split(" · ")[0] for c in _captions(at)] == [f"#{i}" for i in top[str(other)]]


@pytest.mark.integration
def test_clusters_page_unknown_run_in_url_is_a_message(evaluated_run):
    at = _page("clusters", run="deleted42", cluster="999999")
    at.run()
    assert not at.exception
    warnings = _texts(at.warning)
    assert "deleted42" in warnings and "does not exist" in warnings
    assert at.get("plotly_chart")  # it still shows a run that has results


# ---------------------------------------------------------------------------- retrieval


@pytest.mark.integration
def test_retrieval_page_shows_exact_neighbours_and_label_share(evaluated_run):
    store = Store.default()
    folder = Path(_row(store, evaluated_run, "retrieval").artifact_path)
    emb = np.load(folder / "embeddings.npy").astype(np.float64)
    labels = np.load(folder / "labels.npy")
    q, k = 5, 6
    # independent answer: cosine to every other image, best first
    sims = [(float(emb[q] @ emb[j]), j) for j in range(len(emb)) if j != q]
    want = [j for _, j in sorted(sims, key=lambda t: (-t[0], t[1]))[:k]]

    at = _page("retrieval", run=evaluated_run, index=str(q), k=str(k))
    at.run()
    assert not at.exception, at.exception
    captions = _captions(at)
    assert captions[0] == f"query #{q}"
    got = [int(c.split(" · ")[0][1:]) for c in captions[1:]]
    assert len(got) == k
    assert set(got) == set(want)  # (ties may order differently)
    share = next(m.value for m in at.metric if m.label == "Neighbours with the query's label")
    assert share == f"{np.mean(labels[want] == labels[q]):.0%}"

    at.number_input(key="index").set_value(7).run()
    assert at.query_params["index"] == "7"
    assert _captions(at)[0] == "query #7"


@pytest.mark.integration
def test_retrieval_page_upload_checks_and_embeds(evaluated_run):
    from PIL import Image

    from sslengine.config import parse_config
    from sslengine.train.data import load_split

    at = _page("retrieval", run=evaluated_run)
    at.run()
    at.radio[0].set_value("upload an image").run()
    up = at.file_uploader(key="upload")
    up.set_value(("notes.png", b"this is not a picture", "image/png")).run()
    assert not at.exception
    assert "not a readable image" in _texts(at.error)

    at.file_uploader(key="upload").set_value(
        ("huge.png", b"\x89PNG" + b"0" * (5 * 1024 * 1024), "image/png")
    ).run()
    assert "the limit is 5 MB" in _texts(at.error)

    # the dataset's own image 11, uploaded as a PNG, finds itself first (same preparation)
    run = Store.default().get_run(evaluated_run)
    test = load_split(parse_config(run.config), "test")
    buf = io.BytesIO()
    Image.fromarray(np.asarray(test.images[11])).save(buf, format="PNG")
    at.file_uploader(key="upload").set_value(("eleven.png", buf.getvalue(), "image/png")).run()
    assert not at.exception, at.exception
    assert not at.error, _texts(at.error)
    first = next(c for c in _captions(at) if c.startswith("#"))
    index, _, similarity = first.split(" · ")
    assert index == "#11" and float(similarity) == pytest.approx(1.0, abs=1e-3)


# ---------------------------------------------------------------------------- embeddings


@pytest.mark.integration
def test_embeddings_page_projects_every_point_coloured_by_label_or_cluster(evaluated_run):
    from app.projection import pca_2d

    store = Store.default()
    folder = Path(_row(store, evaluated_run, "retrieval").artifact_path)
    emb = np.load(folder / "embeddings.npy")
    labels = np.load(folder / "labels.npy")
    at = _page("embeddings", run=evaluated_run)
    at.run()
    assert not at.exception, at.exception
    fig = _figure(at, "projection")
    points = {}
    for trace in fig["data"]:
        xs, ys, data = _array(trace["x"]), _array(trace["y"]), trace["customdata"]
        for x, y, (idx, group) in zip(xs, ys, data, strict=True):
            points[int(idx)] = (float(x), float(y), group)
    assert sorted(points) == list(range(len(emb)))  # fewer than 2000: all of them
    xy = pca_2d(emb)
    drawn = np.array([points[i][:2] for i in range(len(emb))])
    assert np.abs(drawn - xy).max() < 1e-4
    assert {points[i][2] for i in range(len(emb))} == {str(v) for v in set(labels.tolist())}

    at.selectbox(key="color").set_value("cluster").run()
    assign = np.load(Path(_row(store, evaluated_run, "clusters").artifact_path) / "assignments.npy")
    fig = _figure(at, "projection")
    groups = {int(i): g for t in fig["data"] for i, g in t["customdata"]}
    assert all(groups[i] == f"cluster {assign[i]}" for i in range(len(emb)))

    at.number_input(key="show_index").set_value(9).run()
    assert any(c.startswith("#9 · ") for c in _captions(at))


# ---------------------------------------------------------------------------- helpers


def test_tail_lines_matches_reading_the_whole_file(tmp_path):
    from app.artifacts import tail_lines

    path = tmp_path / "log.txt"
    lines = [f"{i} " + "x" * (i % 37) for i in range(500)]
    path.write_text("\n".join(lines) + "\n")
    for n in (0, 1, 7, 100, 499, 500, 600):
        for block in (5, 64, 8192):
            assert tail_lines(path, n, block=block) == (lines[-n:] if n else [])
    path.write_text("no newline at the end")
    assert tail_lines(path, 3) == ["no newline at the end"]
    path.write_bytes(b"")
    assert tail_lines(path, 3) == []


def test_pca_2d_matches_sklearn_up_to_sign():
    from sklearn.decomposition import PCA

    from app.projection import pca_2d, sample_indices

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 12)) @ rng.normal(size=(12, 12))
    ours = pca_2d(x)
    ref = PCA(n_components=2, svd_solver="full").fit_transform(x)
    for j in range(2):
        sign = np.sign(ours[:, j] @ ref[:, j])
        assert ours[:, j] == pytest.approx(sign * ref[:, j], abs=1e-8)
    # fixed orientation: the largest loading of each component is positive
    again = pca_2d(x[::-1].copy())[::-1]
    assert again == pytest.approx(ours, abs=1e-8)
    assert pca_2d(np.ones((3, 1))).shape == (3, 2)
    idx = sample_indices(1000, 50, seed=3)
    assert len(set(idx.tolist())) == 50 and list(idx) == sorted(idx)
    assert list(sample_indices(5, 50)) == [0, 1, 2, 3, 4]


def test_dataset_choices_lists_folders_and_archives(tmp_path):
    from app.dataset_choices import dataset_choices

    a, b = tmp_path / "a", tmp_path / "b"
    (a / "flowers" / "rose").mkdir(parents=True)
    (a / "cifar10").mkdir()
    (a / "cifar10" / "cifar10-jpg.tar.gz").write_bytes(b"")
    (a / "loose.tar").write_bytes(b"")
    (a / "readme.txt").write_text("")
    (a / ".hidden").mkdir()
    (b / "flowers").mkdir(parents=True)  # same relative path: the first root wins
    (b / "pets").mkdir()
    got = [(c.name, c.root) for c in dataset_choices([a, tmp_path / "missing", b])]
    assert got == [
        ("digits", None),
        ("cifar10", "cifar10"),
        ("cifar10", "cifar10/cifar10-jpg.tar.gz"),
        ("imagefolder", "flowers"),
        ("cifar10", "loose.tar"),
        ("imagefolder", "pets"),
    ]


def _rec(i: int, run: str, step: int | None, layer: str, top1: float) -> EvalResultRecord:
    return EvalResultRecord(i, run, step, "probe", layer, {"top1": top1}, None, datetime.now(UTC))


def test_latest_step_rows_keeps_each_runs_last_step_and_newest_repeat():
    from app.artifacts import latest_step_rows, row_for, steps_of

    rows = [
        _rec(1, "a", 10, "pooled", 0.1),
        _rec(2, "a", 20, "layer4", 0.2),
        _rec(3, "a", 20, "conv1", 0.3),
        _rec(4, "a", 20, "layer4", 0.4),  # the same evaluation again: replaces row 2
        _rec(5, "b", 5, "pooled", 0.5),
        _rec(6, "b", None, "pooled", 0.6),
    ]
    got = [(r.id, r.run_id, r.layer) for r in latest_step_rows(rows)]
    assert got == [(3, "a", "conv1"), (4, "a", "layer4"), (5, "b", "pooled")]
    assert steps_of(rows) == [20, 10, 5]
    assert row_for(rows, 20, "layer4").id == 4
    assert row_for(rows, 30, "layer4") is None


def test_knn_label_names_a_readout_other_than_the_default():
    from app.charts import knn_metric_label

    assert knn_metric_label(None)[0] == "kNN top-1 (k=20)"
    assert knn_metric_label({"knn_tap": "pooled", "knn_patch_grid": 1})[0] == "kNN top-1 (k=20)"
    assert knn_metric_label({"knn_tap": "layer2"})[0] == "kNN top-1 (k=20, layer2)"
    label, help_text = knn_metric_label({"knn_tap": "layer2", "knn_patch_grid": 3})
    assert label == "kNN top-1 (k=20, layer2, 3x3 cells)"
    assert "eval.knn_patch_grid" in help_text and "layer2" in help_text
