"""A corpus of bad input through the entry points a user hits: config YAML, CLI flags, form
values, dataset folders. Each case must give a clear message naming the problem (or a file
skipped and counted), never a traceback, and must not lose anything already stored."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from services_fixtures import tiny_simclr, wait_for_status
from sslengine.cli import app as cli
from sslengine.config import ConfigError, config_errors, load_config
from sslengine.data.datasets import DatasetError, load_dataset
from sslengine.store import Store

# --- config YAML files: (text, words the message must contain) -----------------------------
YAML_CASES = [
    ("train:\n  batch_size: -8\n", "train.batch_size"),
    ("train:\n  batch_size: 0\n", "train.batch_size"),
    ("train:\n  batch_size: eight\n", "train.batch_size"),
    ("train:\n  batch_size: 12.5\n", "train.batch_size"),
    ("train:\n  epochs: 0\n", "train.epochs"),
    ("optim:\n  lr: .nan\n", "optim.lr"),
    ("optim:\n  lr: .inf\n", "optim.lr"),
    ("optim:\n  lr: -0.1\n", "optim.lr"),
    ("optim:\n  weight_decay: .nan\n", "optim.weight_decay"),
    ("optim:\n  name: adam9\n", "optim.name"),
    ("method: byol\n", "method"),
    ("method: 42\n", "method"),
    ("methd: simclr\n", "methd"),
    ("train: 5\n", "train"),
    ("train:\n  - 1\n  - 2\n", "train"),
    ("dataset:\n  name: imagefolder\n", "dataset"),
    ("dataset:\n  image_size: 4\n", "dataset.image_size"),
    ("dataset:\n  max_per_class: 0\n", "dataset.max_per_class"),
    ("views:\n  crop_scale_min: 0.9\n  crop_scale_max: 0.2\n", "crop_scale_min"),
    ("views:\n  hflip_p: 2\n", "views.hflip_p"),
    ("train:\n  devices: -1\n", "train.devices"),
    ("train:\n  devices: many\n", "train.devices"),
    ("train:\n  batch_size: 30\n  devices: 4\n", "train.devices"),
    ("method: moco\nmoco:\n  queue_size: 100\ntrain:\n  batch_size: 64\n", "moco.queue_size"),
    ("method: swav\nswav:\n  n_large_crops: 0\n", "swav.n_large_crops"),
    ("method: jigsaw\njigsaw:\n  n_permutations: 1000000\n", "jigsaw.n_permutations"),
    ("simclr:\n  temperature: 0\n", "simclr.temperature"),
    ("eval:\n  knn_k: [0]\n", "eval.knn_k"),
    ("seed: -1\n", "seed"),
    ("- just\n- a list\n", "mapping"),
    ("train: {batch_size: [unclosed\n", "not valid YAML"),
]


@pytest.mark.parametrize(("text", "needle"), YAML_CASES)
def test_bad_yaml_is_refused_naming_the_field(tmp_path, text, needle):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert needle in str(info.value)
    assert "Traceback" not in str(info.value)


# --- CLI flags ------------------------------------------------------------------------------
CLI_CASES = [
    (["validate", "--set", "train.batch_size"], "key=value"),
    (["validate", "--set", "train.batch_size=-1"], "train.batch_size"),
    (["validate", "--set", "nonsense.key=1"], "nonsense"),
    (["validate", "does-not-exist.yaml"], "not found"),
    (["runs", "show", "nope-nope"], "does not exist"),
]


@pytest.mark.parametrize(("args", "needle"), CLI_CASES)
def test_bad_cli_input_gives_message_not_traceback(ssl_home, args, needle):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)


# --- form values (what the launch page sends) -----------------------------------------------
# (values, the form field that must show the error under its widget or its section)
FORM_CASES = [
    ({"train": {"batch_size": "abc"}}, "train.batch_size"),
    ({"train": {"batch_size": None}}, "train.batch_size"),
    ({"optim": {"lr": "nan"}}, "optim.lr"),
    ({"eval": {"knn_k": "twenty"}}, "eval.knn_k"),
    ({"eval": {"knn_k": ["a"]}}, "eval.knn_k"),  # pydantic: eval.knn_k.0
    ({"eval": {"knn_k": [20, 2.5]}}, "eval.knn_k"),  # pydantic: eval.knn_k.1
    ({"train": {"devices": "many"}}, "train.devices"),  # pydantic: .int and .literal['auto']
    ({"train": {"devices": None}}, "train.devices"),
    ({"dataset": {"name": "cifar10", "root": ""}}, "dataset"),
]


def _draw_form(errors: dict[str, str]) -> None:  # an AppTest script: the launch form alone
    from app.forms import config_form
    from sslengine.config import ExperimentConfig

    config_form(ExperimentConfig().model_dump(mode="json"), ["simclr"], errors)


def _shown_under(nodes: list, field: str) -> str:
    """The error text drawn right under the field's widget (a section: under its last one)."""
    from streamlit.testing.v1.element_tree import Error

    keys = [getattr(n, "key", None) or "" for n in nodes]
    mine = [i for i, k in enumerate(keys) if k == f"cfg.{field}" or k.startswith(f"cfg.{field}.")]
    below = nodes[max(mine) + 1] if mine and max(mine) + 1 < len(nodes) else None
    return str(below.value) if isinstance(below, Error) else ""


@pytest.mark.parametrize(("data", "field"), FORM_CASES)
def test_bad_form_values_are_keyed_to_their_field(data, field):
    """Every error config_errors reports is drawn by the launch form under the widget it
    belongs to, as one readable message naming the field (not pydantic's raw union lines)."""
    from streamlit.testing.v1 import AppTest

    errors = config_errors(data)
    assert errors
    at = AppTest.from_function(_draw_form, args=(errors,), default_timeout=30)
    at.run()
    assert not at.exception
    nodes: list = []

    def walk(node) -> None:
        for child in getattr(node, "children", {}).values():
            nodes.append(child)
            walk(child)

    walk(at._tree)
    under = _shown_under(nodes, field)
    assert f"`{field}`" in under, (errors, under)
    assert len(at.error) == 1, [e.value for e in at.error]  # one message, nothing elsewhere
    assert "literal[" not in under and "Input should be a valid" not in under, under


def test_form_errors_go_to_the_deepest_field_on_a_dot_boundary():
    from app.forms import error_owner, form_paths, route_errors

    paths = form_paths()
    assert error_owner("train.devices", paths) == "train.devices"
    assert error_owner("train.devices.int", paths) == "train.devices"
    assert error_owner("train.devices.literal['auto']", paths) == "train.devices"
    assert error_owner("eval.knn_k.0", paths) == "eval.knn_k"
    assert error_owner("train.devices_x", paths) == "train"  # not a string prefix match
    assert error_owner("trainer.x", paths) is None
    assert error_owner("", paths) is None
    errors = {
        "train.devices.int": "Input should be a valid integer, unable to parse string",
        "train.devices.literal['auto']": "Input should be 'auto'",
        "train.devices_x": "unknown key (not a config field)",
        "eval.knn_k.0": "Input should be a valid integer, unable to parse string",
        "eval.knn_k.2": "Input should be a valid integer, unable to parse string",
        "": "train.batch_size 30 is not divisible by train.devices 4",
        "nowhere.at.all": "odd",
    }
    placed, unowned = route_errors(errors, paths)
    assert placed == {
        "train.devices": "`train.devices`: expected an integer or 'auto'",
        "train": "`train.devices_x`: unknown key (not a config field)",
        "eval.knn_k": "`eval.knn_k`: items 1, 3: expected an integer",
    }
    assert unowned == {"": errors[""], "nowhere.at.all": "`nowhere.at.all`: odd"}


# --- dataset folders -------------------------------------------------------------------------
def _png(path: Path, img: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def test_empty_folder_and_folder_without_classes(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="empty"):
        load_dataset("imagefolder", empty, "train", 16, tmp_path / "cache")
    flat = tmp_path / "flat"
    _png(flat / "a.png", Image.new("RGB", (8, 8)))
    with pytest.raises(DatasetError, match="class"):
        load_dataset("imagefolder", flat, "train", 16, tmp_path / "cache")


def test_every_kind_of_odd_image_is_loaded_or_skipped_and_counted(tmp_path):
    root = tmp_path / "odd"
    good = root / "good"
    _png(good / "rgb.png", Image.new("RGB", (20, 20), (200, 10, 10)))
    _png(good / "gray.png", Image.new("L", (20, 20), 128))
    Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(root / "good" / "cmyk.jpg")
    _png(good / "palette.png", Image.new("P", (20, 20), 3))
    _png(good / "sixteen.png", Image.fromarray(np.full((20, 20), 40000, dtype=np.uint16)))
    _png(good / "tiny.png", Image.new("RGB", (1, 1), (0, 255, 0)))
    exif = Image.new("RGB", (30, 20), (0, 0, 255)).getexif()
    exif[0x0112] = 6  # rotated 90 degrees
    Image.new("RGB", (30, 20), (0, 0, 255)).save(good / "exif.jpg", exif=exif)
    _png(good / ("name-\udcff-latin1.png"), Image.new("RGB", (20, 20), (9, 9, 9)))
    bad = root / "bad"
    bad.mkdir()
    (bad / "zero.jpg").write_bytes(b"")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, format="JPEG")
    (bad / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    (bad / "text.jpg").write_text("this is not an image")
    # a 20000 x 20000 image (1-bit, small on disk): a decompression bomb for PIL
    Image.new("1", (20000, 20000)).save(bad / "huge.png")
    _png(bad / "ok.png", Image.new("RGB", (20, 20), (5, 5, 5)))

    ds = load_dataset("imagefolder", root, "train", 16, tmp_path / "cache")
    assert ds.images.shape[1:] == (16, 16, 3)
    assert len(ds) == 9  # 8 good + bad/ok.png
    assert ds.skipped == 4, ds.skipped_files
    assert {Path(f).name for f in ds.skipped_files} == {
        "zero.jpg",
        "truncated.jpg",
        "text.jpg",
        "huge.png",
    }


@pytest.mark.integration
def test_worker_survives_a_bad_dataset_and_keeps_earlier_runs(
    celery_worker, ssl_home, finished_run
):
    """A run on an empty folder fails with its message; the worker keeps serving; nothing
    stored earlier is touched."""
    from tasks.submit import submit

    store = Store.default()
    before = store.metric_series(finished_run, "loss")
    empty = ssl_home / "data" / "empty-dataset"
    empty.mkdir(exist_ok=True)
    bad = tiny_simclr()
    bad["dataset"] = {"name": "imagefolder", "root": str(empty), "image_size": 16}
    run_id = submit(bad, store=store)
    assert wait_for_status(store, run_id, {"failed", "succeeded"}, 120) == "failed"
    assert "empty-dataset" in store.get_run(run_id).error
    ok = submit(tiny_simclr(max_steps=2), store=store)
    assert wait_for_status(store, ok, {"failed", "succeeded"}, 120) == "succeeded"
    assert store.metric_series(finished_run, "loss") == before
    assert os.path.isdir(ssl_home / "var")
