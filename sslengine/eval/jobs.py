"""The evaluation runner shared by the CLI and the queue: one evaluation of one checkpoint.

``run_evaluation(store, run_id, kind, ...)`` validates the request completely (the run, the
checkpoint, the layer, the parameters, labels where the evaluation needs them) BEFORE it
computes or writes anything, so bad input raises a ValueError with a clear message and leaves
the store and the artifact folder untouched. It then rebuilds the backbone from the
checkpoint's own config and weights (the dataset and seed come from the run's stored config,
the one validation checked; for a run both are the same), runs the evaluation and writes
store rows and artifacts exactly as ``docs/eval-contract.md`` describes.

Kinds: ``knn``, ``probe`` (one row per tap), ``finetune``, ``retrieval`` (embeddings + faiss
index), ``clusters`` (SwAV prototypes or k-means). ``probe_over_training`` probes every
checkpoint of a run, so accuracy per layer can be drawn against the training step.

``python -m sslengine.eval.jobs RUN KIND [--step N] [--layer L] [--params JSON]`` runs one in
this process and prints ``{"ids": [...]}`` as its last stdout line (the Celery task starts it
as a child process, so CUDA is never touched in the worker).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from sslengine.config import (
    ExperimentConfig,
    format_validation_error,
    parse_config,
    patch_grid_problem,
)
from sslengine.data.datasets import ImageArrayDataset
from sslengine.models.backbones import TAPS, Backbone, build_backbone
from sslengine.store import Store
from sslengine.store.artifacts import run_artifact_dir
from sslengine.store.repository import CheckpointRecord, RunRecord

__all__ = [
    "KINDS",
    "EvalRequest",
    "LoadedCheckpoint",
    "artifact_folder",
    "load_backbone",
    "main",
    "probe_over_training",
    "run_evaluation",
    "validate_request",
]

log = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("knn", "probe", "finetune", "retrieval", "clusters")
NEEDS_LABELS = frozenset({"knn", "probe", "finetune"})
BACKBONE_PREFIX = "method.backbone."


# ------------------------------------------------------------------------------ parameters


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KnnParams(_Params):
    """Weighted kNN (Wu et al. 2018): k values (the contract's 20 and 200), temperature."""

    k: list[int] = Field(default_factory=lambda: [20, 200], min_length=1)
    temperature: float | None = Field(None, gt=0.0, le=10.0, description="default: config's")
    max_train: int | None = Field(None, ge=1, description="default: config's knn_max_train")
    patch_grid: int | None = Field(
        None, ge=1, le=8, description="default: config's knn_patch_grid (1 = whole images)"
    )


class ProbeParams(_Params):
    """Goyal et al. 2019 linear probe (see sslengine.eval.probe)."""

    epochs: int = Field(28, ge=1, le=1000)
    batch_size: int = Field(256, ge=2, le=65536)
    lr: float = Field(0.1, gt=0.0, le=100.0)
    weight_decay: float = Field(5e-4, ge=0.0, le=1.0)
    target_dim: int = Field(9216, ge=1, le=1_000_000)


class FinetuneParams(_Params):
    epochs: int = Field(10, ge=1, le=1000)
    batch_size: int = Field(128, ge=2, le=65536)
    lr: float = Field(0.1, gt=0.0, le=100.0)
    backbone_lr: float = Field(0.01, ge=0.0, le=100.0)
    weight_decay: float = Field(5e-4, ge=0.0, le=1.0)


class RetrievalParams(_Params):
    index_type: Literal["auto", "flat", "ivf", "hnsw"] = "auto"
    split: Literal["train", "test"] = Field("test", description="test falls back to train")
    target_recall: float = Field(0.95, gt=0.0, le=1.0)


class ClustersParams(_Params):
    k: int | None = Field(None, ge=1, le=100_000, description="default: classes, else 100")
    source: Literal["auto", "prototypes", "kmeans"] = Field(
        "auto", description="auto: SwAV's prototypes for swav runs, k-means otherwise"
    )
    split: Literal["train", "test"] = "test"
    niter: int = Field(25, ge=1, le=1000)
    top_n: int = Field(16, ge=1, le=256)


PARAMS: dict[str, type[_Params]] = {
    "knn": KnnParams,
    "probe": ProbeParams,
    "finetune": FinetuneParams,
    "retrieval": RetrievalParams,
    "clusters": ClustersParams,
}


# ------------------------------------------------------------------------------ validation


@dataclass
class EvalRequest:
    """A validated evaluation request: everything is known to exist and to make sense."""

    run: RunRecord
    kind: str
    checkpoint: CheckpointRecord
    cfg: ExperimentConfig
    layers: tuple[str, ...]
    params: Any

    @property
    def run_id(self) -> str:
        return self.run.id


def _resolve_layers(kind: str, layer: str | None, params: Any, cfg: ExperimentConfig) -> tuple:
    def taps_of(text: str) -> tuple[str, ...]:
        taps = tuple(t.strip() for t in text.split(",") if t.strip())
        unknown = [t for t in taps if t not in TAPS]
        if unknown or not taps:
            raise ValueError(f"unknown tap(s) {unknown or [text]}; known taps: {', '.join(TAPS)}")
        if len(set(taps)) != len(taps):
            raise ValueError(f"tap(s) requested twice: {text}")
        return taps

    if kind == "probe":
        return TAPS if layer in (None, "", "all") else taps_of(layer)
    if kind == "finetune":
        if layer not in (None, "", "all"):
            raise ValueError(f"fine-tuning trains the whole network: layer must be 'all', "
                             f"not '{layer}'")  # fmt: skip
        return ("all",)
    if kind == "clusters" and layer == "prototypes":
        layer = "pooled"
        if params.source == "kmeans":
            raise ValueError("layer 'prototypes' needs source 'prototypes' or 'auto'")
        params.source = "prototypes"
    # a kNN job reads the tap the run's own end-of-run kNN read, unless told otherwise
    taps = taps_of(layer or (cfg.eval.knn_tap if kind == "knn" else "pooled"))
    if len(taps) != 1:
        raise ValueError(f"evaluation '{kind}' takes one tap, got {list(taps)}")
    if kind == "clusters":
        if params.source == "auto":
            use = cfg.method == "swav" and taps[0] == "pooled"
            params.source = "prototypes" if use else "kmeans"
        if params.source == "prototypes":
            if cfg.method != "swav":
                raise ValueError(f"run uses method '{cfg.method}': only swav runs have "
                                 "prototypes; use source 'kmeans'")  # fmt: skip
            if taps[0] != "pooled":
                raise ValueError("SwAV's prototypes score the projected pooled features: "
                                 f"use layer 'pooled', not '{taps[0]}'")  # fmt: skip
            return ("prototypes",)
    return taps


def _checkpoint(store: Store, run_id: str, step: int | None) -> CheckpointRecord:
    checkpoints = store.list_checkpoints(run_id)
    if not checkpoints:
        raise ValueError(f"run {run_id} has no checkpoint")
    if step is None:
        chosen = checkpoints[-1]
    else:
        found = [c for c in checkpoints if c.step == step]
        if not found:
            steps = ", ".join(str(c.step) for c in checkpoints)
            raise ValueError(
                f"run {run_id} has no checkpoint at step {step}; available steps: {steps}"
            )
        chosen = found[0]
    if not Path(chosen.path).is_file():
        raise ValueError(f"checkpoint file of run {run_id} at step {chosen.step} is missing: "
                         f"{chosen.path}")  # fmt: skip
    return chosen


def _check_labels(cfg: ExperimentConfig, kind: str) -> None:
    from sslengine.train.data import load_splits

    train, test = load_splits(cfg)
    for what, ds in (("training", train), ("test", test)):
        if ds is None:
            continue
        unlabelled = int((np.asarray(ds.labels) < 0).sum())
        if unlabelled:
            raise ValueError(
                f"evaluation '{kind}' needs labels, but the {what} split of dataset "
                f"'{cfg.dataset.name}' has {unlabelled} unlabelled images"
            )
    if len(train.classes) < 2:
        raise ValueError(
            f"evaluation '{kind}' needs labels, but dataset '{cfg.dataset.name}' has "
            f"{len(train.classes)} class ({', '.join(train.classes) or 'none'}): nothing to "
            "classify; use retrieval or clusters"
        )


def validate_request(
    store: Store,
    run_id: str,
    kind: str,
    checkpoint_step: int | None = None,
    layer: str | None = None,
    params: dict[str, Any] | None = None,
    check_data: bool = True,
) -> EvalRequest:
    """Check a request without computing or writing anything; ValueError says what is wrong.

    `layer`: None = the kind's default (probe: every tap; finetune: "all"; knn: the run's
    eval.knn_tap; others: "pooled");
    for probe a comma-separated list of taps; for clusters "prototypes" selects SwAV's.
    `check_data` loads the dataset's labels (from the decoded cache) for the kinds that need
    labels.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown evaluation kind '{kind}'; choose from: {', '.join(KINDS)}")
    run = store.get_run(run_id)
    if run is None:
        raise ValueError(f"run {run_id} does not exist")
    try:
        parsed = PARAMS[kind].model_validate(dict(params or {}))
    except ValidationError as err:
        raise ValueError(f"invalid {kind} parameters:\n{format_validation_error(err)}") from None
    checkpoint = _checkpoint(store, run_id, checkpoint_step)
    cfg = parse_config(run.config)
    layers = _resolve_layers(kind, layer, parsed, cfg)
    grid = getattr(parsed, "patch_grid", None)
    grid_problem = grid and patch_grid_problem("patch_grid", grid, cfg.dataset.image_size)
    if grid_problem:
        raise ValueError(f"this run's images: {grid_problem}")
    if check_data and kind in NEEDS_LABELS:
        _check_labels(cfg, kind)
    return EvalRequest(run, kind, checkpoint, cfg, layers, parsed)


# ------------------------------------------------------------------------------ checkpoint


@dataclass
class LoadedCheckpoint:
    step: int
    cfg: ExperimentConfig
    mean: tuple[float, ...]
    std: tuple[float, ...]
    model_state: dict[str, torch.Tensor]


def _load(path: str | Path) -> LoadedCheckpoint:
    from sslengine.train.checkpoint import load_checkpoint

    state = load_checkpoint(path, map_location="cpu")
    cfg = parse_config(json.loads(state["config"]))
    return LoadedCheckpoint(
        step=int(state["step"]),
        cfg=cfg,
        mean=tuple(float(v) for v in state["mean"]),
        std=tuple(float(v) for v in state["std"]),
        model_state=state["model"],
    )


def _backbone_from(ckpt: LoadedCheckpoint, device: torch.device) -> Backbone:
    weights = {
        k.removeprefix(BACKBONE_PREFIX): v
        for k, v in ckpt.model_state.items()
        if k.startswith(BACKBONE_PREFIX)
    }
    if not weights:
        raise ValueError(f"checkpoint has no backbone weights (no '{BACKBONE_PREFIX}*' keys)")
    backbone = build_backbone(ckpt.cfg.backbone.name, cifar_stem=ckpt.cfg.backbone.cifar_stem)
    backbone.load_state_dict(weights, strict=True)
    return backbone.to(device).eval()


def load_backbone(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[Backbone, LoadedCheckpoint]:
    """The frozen backbone of a checkpoint (built from the checkpoint's own config, weights
    from ``model['method.backbone.*']``, loaded with weights_only=True), in eval mode."""
    ckpt = _load(path)
    return _backbone_from(ckpt, torch.device(device)), ckpt


def _method_from(ckpt: LoadedCheckpoint, dataset_size: int, device: torch.device) -> nn.Module:
    """The whole method (heads, prototypes) with the checkpoint's weights; the online probe's
    ``probe.*`` keys belong to the training wrapper, not the method."""
    from sslengine.methods import build_method

    method = build_method(ckpt.cfg, dataset_size, ckpt.mean, ckpt.std)
    prefix = "method."
    weights = {
        k.removeprefix(prefix): v for k, v in ckpt.model_state.items() if k.startswith(prefix)
    }
    method.load_state_dict(weights, strict=True)
    return method.to(device).eval()


# ------------------------------------------------------------------------------ running


def _default_device(device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _eval_dir(run_id: str) -> Path:
    path = run_artifact_dir(run_id) / "eval"
    path.mkdir(parents=True, exist_ok=True)
    return path


def artifact_folder(run_id: str, kind: str, step: int, layer: str) -> Path:
    """``run_artifact_dir(run_id) / "eval" / f"{kind}-step{step:08d}-{layer}"`` (the contract)."""
    return run_artifact_dir(run_id) / "eval" / f"{kind}-step{step:08d}-{layer}"


def _publish(tmp: Path, final: Path) -> None:
    """Move a finished artifact folder into place, replacing an earlier one of the same name;
    readers see the old folder or the new one, never a half-written one."""
    old = None
    if final.exists():
        old = final.with_name(f".old-{final.name}-{uuid.uuid4().hex[:8]}")
        final.rename(old)
    tmp.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@dataclass
class _Data:
    train: ImageArrayDataset
    test: ImageArrayDataset | None

    def labelled_pair(self, seed: int) -> tuple[ImageArrayDataset, ImageArrayDataset]:
        if self.test is not None:
            return self.train, self.test
        from sslengine.eval.runner import holdout_split

        return holdout_split(self.train, seed=seed)

    def split(self, role: str, cfg: ExperimentConfig) -> tuple[ImageArrayDataset, str]:
        """The split a retrieval/clusters job indexes ('test' falls back to 'train')."""
        if role == "test" and self.test is not None:
            return self.test, cfg.dataset.test_split
        return self.train, cfg.dataset.train_split


def _meta(cfg: ExperimentConfig, split: str, tap: str, **extra: Any) -> str:
    meta = {"dataset": cfg.dataset.model_dump(mode="json"), "split": split, "tap": tap, **extra}
    return json.dumps(meta, indent=1)


Row = tuple[str, dict[str, Any], Path | None]  # (layer, metrics, finished artifact folder)


def _knn(req: EvalRequest, backbone: Backbone, ckpt: LoadedCheckpoint, data: _Data, progress):
    from sslengine.eval.features import extract_features
    from sslengine.eval.knn import knn_classify

    p: KnnParams = req.params
    tap = req.layers[0]
    train, test = data.labelled_pair(req.cfg.seed)
    max_train = p.max_train or req.cfg.eval.knn_max_train
    if max_train and len(train) > max_train:
        rng = np.random.default_rng(req.cfg.seed)
        train = train.subset(np.sort(rng.choice(len(train), max_train, replace=False)))
    grid = p.patch_grid or req.cfg.eval.knn_patch_grid
    f_train = extract_features(
        backbone, train.images, ckpt.mean, ckpt.std, (tap,), progress=progress, patch_grid=grid
    )
    f_test = extract_features(
        backbone, test.images, ckpt.mean, ckpt.std, (tap,), progress=progress, patch_grid=grid
    )
    metrics: dict[str, Any] = knn_classify(
        f_train[tap],
        np.asarray(train.labels),
        f_test[tap],
        np.asarray(test.labels),
        ks=tuple(p.k),
        temperature=p.temperature or req.cfg.eval.knn_temperature,
        num_classes=len(train.classes),
    )
    metrics.update(n_train=len(train), n_test=len(test), patch_grid=grid)
    return [(tap, metrics, None)]


def _probe(req: EvalRequest, backbone: Backbone, ckpt: LoadedCheckpoint, data: _Data, progress):
    from sslengine.eval.probe import layerwise_probe

    p: ProbeParams = req.params
    train, test = data.labelled_pair(req.cfg.seed)
    result = layerwise_probe(
        backbone,
        train,
        test,
        ckpt.mean,
        ckpt.std,
        taps=req.layers,
        epochs=p.epochs,
        batch_size=p.batch_size,
        lr=p.lr,
        weight_decay=p.weight_decay,
        target=p.target_dim,
        seed=req.cfg.seed,
        # CIFAR-10's train split at ~9k dims x 6 taps is ~9 GB: beside the run, not in /tmp
        workdir=_eval_dir(req.run_id),
        progress=progress,
    )
    return [(tap, {**r, "epochs": p.epochs}, None) for tap, r in result.items()]


def _finetune(req: EvalRequest, backbone: Backbone, ckpt: LoadedCheckpoint, data: _Data, progress):
    from sslengine.eval.finetune import finetune

    p: FinetuneParams = req.params
    train, test = data.labelled_pair(req.cfg.seed)
    metrics = finetune(
        backbone,
        train,
        test,
        ckpt.mean,
        ckpt.std,
        epochs=p.epochs,
        batch_size=p.batch_size,
        lr=p.lr,
        backbone_lr=p.backbone_lr,
        weight_decay=p.weight_decay,
        seed=req.cfg.seed,
        progress=progress,
    )
    return [("all", metrics, None)]


def _retrieval(req, backbone: Backbone, ckpt: LoadedCheckpoint, data: _Data, progress, tmp: Path):
    from sslengine.eval.retrieval import (
        build_index_with_tuning,
        drop_self_matches,
        embed_images,
        precision_at_k,
        save_index,
        search,
    )

    p: RetrievalParams = req.params
    tap = req.layers[0]
    ds, split = data.split(p.split, req.cfg)
    emb = embed_images(backbone, ds.images, ckpt.mean, ckpt.std, tap=tap, progress=progress)
    index, tuning = build_index_with_tuning(
        emb, p.index_type, target_recall=p.target_recall, seed=req.cfg.seed
    )
    kind = tuning["index_type"]
    labels = np.asarray(ds.labels, dtype=np.int64)
    metrics: dict[str, Any] = {"n": int(emb.shape[0]), "dim": int(emb.shape[1]), "index_type": kind}
    # precision needs labels of 2+ classes (one folder of photos: every neighbour "matches")
    if (labels >= 0).all() and len(np.unique(labels)) > 1 and len(labels) > 10:
        _, ids = search(index, emb, 11)
        neighbours = drop_self_matches(ids, np.arange(len(labels)), 10)
        metrics["precision_at_10"] = precision_at_k(neighbours, labels, labels, 10)
    np.save(tmp / "embeddings.npy", emb.astype(np.float32))
    np.save(tmp / "labels.npy", labels)
    save_index(index, tmp / "index.faiss")
    (tmp / "meta.json").write_text(
        _meta(req.cfg, split, tap, index_type=kind, tuning=tuning, step=ckpt.step)
    )
    return [(tap, metrics, tmp)]


def _clusters(req, backbone: Backbone, ckpt: LoadedCheckpoint, data: _Data, progress, tmp: Path):
    from sslengine.eval.clusters import kmeans_clusters, prototype_clusters
    from sslengine.eval.features import extract_features

    p: ClustersParams = req.params
    layer = req.layers[0]
    tap = "pooled" if layer == "prototypes" else layer
    ds, split = data.split(p.split, req.cfg)
    feats = extract_features(backbone, ds.images, ckpt.mean, ckpt.std, (tap,), progress=progress)[
        tap
    ]
    if p.source == "prototypes":
        method = _method_from(ckpt, len(data.train), next(backbone.parameters()).device)
        result = prototype_clusters(
            method.projector, method.prototypes.weight, feats, top_n=p.top_n
        )
    else:
        labels = np.asarray(ds.labels)
        n_classes = len(ds.classes) if (labels >= 0).all() and len(ds.classes) > 1 else 0
        k = min(p.k or n_classes or 100, len(ds))
        result = kmeans_clusters(feats, k, niter=p.niter, seed=req.cfg.seed, top_n=p.top_n)
    result.save(tmp)
    (tmp / "meta.json").write_text(
        _meta(req.cfg, split, tap, source=result.source, k=result.k, step=ckpt.step)
    )
    try:  # a cache for the dashboard: its failure must not lose the evaluation
        from sslengine.eval.thumbnails import render_thumbnails

        shown = sorted({i for idx in result.top_images.values() for i in idx})
        render_thumbnails(req.cfg.dataset, split, shown)
    except Exception as err:  # noqa: BLE001
        log.warning("could not pre-render cluster thumbnails: %s", err)
    return [(layer, result.metrics(), tmp)]


_PLAIN = {"knn": _knn, "probe": _probe, "finetune": _finetune}
_WITH_ARTIFACTS = {"retrieval": _retrieval, "clusters": _clusters}


def _execute(
    store: Store,
    req: EvalRequest,
    checkpoint: CheckpointRecord,
    data: _Data | None,
    device: torch.device,
    progress: bool,
) -> list[int]:
    from sslengine.train.data import load_splits

    started = time.perf_counter()
    log.info("%s of run %s at step %d (%s) on %s: started", req.kind, req.run_id,
             checkpoint.step, ",".join(req.layers), device)  # fmt: skip
    backbone, ckpt = load_backbone(checkpoint.path, device)
    torch.manual_seed(req.cfg.seed)
    if data is None:
        data = _Data(*load_splits(req.cfg))
    if req.kind in _PLAIN:
        rows: list[Row] = _PLAIN[req.kind](req, backbone, ckpt, data, progress)
    else:
        tmp = _eval_dir(req.run_id) / f".tmp-{req.kind}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            rows = _WITH_ARTIFACTS[req.kind](req, backbone, ckpt, data, progress, tmp)
            final = artifact_folder(req.run_id, req.kind, checkpoint.step, rows[0][0])
            _publish(tmp, final)
            rows = [(layer, metrics, final) for layer, metrics, _ in rows]
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    ids = [
        store.add_eval_result(
            req.run_id,
            req.kind,
            metrics,
            checkpoint_step=checkpoint.step,
            layer=layer,
            artifact_path=None if folder is None else str(folder),
        )
        for layer, metrics, folder in rows
    ]
    log.info("%s of run %s at step %d: %d row(s) in %.1f s", req.kind, req.run_id,
             checkpoint.step, len(ids), time.perf_counter() - started)  # fmt: skip
    return ids


def run_evaluation(
    store: Store,
    run_id: str,
    kind: str,
    checkpoint_step: int | None = None,
    layer: str | None = None,
    params: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> list[int]:
    """Evaluate one checkpoint of a run and record it; returns the new eval_result ids.

    Args:
        kind: one of `KINDS`.
        checkpoint_step: a stored checkpoint's step (None = the latest).
        layer: see `validate_request` (None = the kind's default).
        params: the kind's parameters (`PARAMS[kind]` fields; unknown keys are refused).
        device: None = CUDA if available, else CPU.

    Raises ValueError (nothing written) when the request is invalid.
    """
    req = validate_request(store, run_id, kind, checkpoint_step, layer, params)
    return _execute(store, req, req.checkpoint, None, _default_device(device), progress)


def probe_over_training(
    store: Store,
    run_id: str,
    layer: str | None = None,
    params: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> list[int]:
    """Linear-probe every checkpoint of a run, oldest first; each checkpoint's rows (one per
    tap, ``checkpoint_step`` = its step) are written as soon as it is done."""
    from sslengine.train.data import load_splits

    req = validate_request(store, run_id, "probe", None, layer, params)
    checkpoints = store.list_checkpoints(run_id)
    missing = [c.step for c in checkpoints if not Path(c.path).is_file()]
    if missing:
        raise ValueError(f"run {run_id}: checkpoint files missing for steps {missing}")
    data = _Data(*load_splits(req.cfg))
    ids: list[int] = []
    for checkpoint in checkpoints:
        ids += _execute(store, req, checkpoint, data, _default_device(device), progress)
    return ids


# ------------------------------------------------------------------------------ entry point


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sslengine.eval.jobs RUN KIND ...``: prints {"ids": [...]} last on stdout;
    exit 2 with the message on stderr for an invalid request."""
    parser = argparse.ArgumentParser(prog="python -m sslengine.eval.jobs")
    parser.add_argument("run_id")
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
    parser.add_argument("--layer", default=None, help="tap(s); default: the kind's default")
    parser.add_argument("--params", default="{}", help="JSON object of the kind's parameters")
    parser.add_argument("--all-checkpoints", action="store_true", help="probe every checkpoint")
    parser.add_argument("--device", default=None)
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        params = json.loads(args.params)
        if not isinstance(params, dict):
            raise ValueError("--params must be a JSON object")
        store = Store.default()
        if args.all_checkpoints:
            if args.kind != "probe" or args.step is not None:
                raise ValueError("--all-checkpoints is for kind 'probe' without --step")
            ids = probe_over_training(
                store, args.run_id, args.layer, params, args.device, args.progress
            )
        else:
            ids = run_evaluation(
                store,
                args.run_id,
                args.kind,
                args.step,
                args.layer,
                params,
                args.device,
                args.progress,
            )
    except ValueError as err:  # json.JSONDecodeError and ConfigError are ValueErrors too
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"ids": ids}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
