"""Config validation: defaults, YAML + --set overrides, and refusals that name the field."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from sslengine.config import ConfigError, ExperimentConfig, config_errors, load_config, parse_config


def test_defaults_validate_and_roundtrip_yaml(tmp_path):
    cfg = ExperimentConfig()
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg


def test_overrides_apply_nested_values(tmp_path):
    cfg = load_config(
        None,
        [
            "train.batch_size=64",
            "optim.lr=0.5",
            "train.devices=auto",
            "dataset.max_per_class=10",
            "eval.knn_k=[5, 10]",
        ],
    )
    assert cfg.train.batch_size == 64
    assert cfg.optim.lr == 0.5
    assert cfg.train.devices == "auto"
    assert cfg.dataset.max_per_class == 10
    assert cfg.eval.knn_k == [5, 10]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["train.batch_sise=3"], "train.batch_sise"),
        (["bogus=1"], "bogus"),
        (["train.batch_size=0"], "train.batch_size"),
        (["train.batch_size=-4"], "train.batch_size"),
        (["optim.lr=.nan"], "optim.lr"),
        (["optim.lr=0"], "optim.lr"),
        (["optim.lr=abc"], "optim.lr"),
        (["method=byol"], "method"),
        (["dataset.name=imagenet"], "dataset.name"),
        (["dataset.name=imagefolder"], "dataset"),
        (["train.devices=0"], "train.devices"),
        (["views.grayscale_p=1.5"], "views.grayscale_p"),
        (["eval.knn_k=[]"], "eval.knn_k"),
        (["jigsaw.n_permutations=400000"], "jigsaw.n_permutations"),
        (["swav.n_large_crops=0"], "swav.n_large_crops"),
    ],
)
def test_bad_values_are_refused_naming_the_field(overrides, field):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert field in str(info.value)


def test_batch_must_split_over_devices():
    with pytest.raises(ConfigError, match=r"train.batch_size.*train.devices"):
        load_config(None, ["train.batch_size=129", "train.devices=2"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(scalar)


def test_config_errors_are_keyed_by_path():
    errs = config_errors({"train": {"batch_size": 0}, "optim": {"lr": -1}})
    assert set(errs) == {"train.batch_size", "optim.lr"}


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["batch_size", "epochs", "log_every", "max_steps"]),
        st.one_of(
            st.integers(-5, 10**6), st.floats(allow_nan=True), st.text(max_size=5), st.none()
        ),
    )
)
def test_parse_never_crashes_only_refuses(train):
    """Any train section either validates into in-range values or raises ConfigError."""
    try:
        cfg = parse_config({"train": train})
    except ConfigError as err:
        assert str(err)
    else:
        assert cfg.train.batch_size >= 2 and cfg.train.epochs >= 1


def test_yaml_export_is_plain_data():
    text = ExperimentConfig().to_yaml()
    assert isinstance(yaml.safe_load(text), dict)


def test_blur_is_auto_by_image_size_unless_set() -> None:
    """SimCLR's pipeline: blur p=0.5 at ImageNet scale, none at CIFAR scale; an explicit value
    wins, and the views a method draws use the resolved value."""
    from sslengine.methods import build_method

    def views_of(**sections):
        cfg = parse_config({"method": "simclr", **sections})
        method = build_method(cfg, 10, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
        return cfg.views, method.view_config()

    views, vc = views_of(dataset={"name": "digits", "image_size": 32})
    assert views.blur_p is None and vc.blur_p == 0.0
    views, vc = views_of(dataset={"name": "digits", "image_size": 96})
    assert views.blur_p is None and vc.blur_p == 0.5
    views, vc = views_of(dataset={"name": "digits", "image_size": 96}, views={"blur_p": 0.1})
    assert vc.blur_p == 0.1
    views, vc = views_of(dataset={"name": "digits", "image_size": 32}, views={"blur_p": 1.0})
    assert vc.blur_p == 1.0


def test_every_preset_is_a_valid_config() -> None:
    """The launch form and `--preset` offer these: each must parse as it stands."""
    from sslengine.methods import METHODS
    from sslengine.presets import PRESETS

    for name, data in PRESETS.items():
        cfg = parse_config(data)
        assert cfg.method in METHODS, name
    jigsaw = parse_config(PRESETS["Jigsaw, CIFAR-10 subset, small ResNet (CPU)"])
    assert (jigsaw.dataset.image_size, jigsaw.eval.knn_tap) == (48, "layer2")


def test_knn_tap_choices_are_the_backbone_taps() -> None:
    """config.py cannot import torch, so it spells the taps out; they must stay the backbones'."""
    import typing

    from sslengine.config import EvalConfig
    from sslengine.models.backbones import TAPS

    assert typing.get_args(EvalConfig.model_fields["knn_tap"].annotation) == TAPS
