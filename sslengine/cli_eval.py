"""`sslengine eval ...`: evaluate a stored run's checkpoint here (default) or through the queue.

    sslengine eval knn RUN
    sslengine eval probe RUN [--step N | --all-checkpoints] [--layer conv1,layer4] [--epochs 28]
    sslengine eval finetune RUN [--epochs 10]
    sslengine eval retrieval RUN [--tap pooled] [--index-type auto]
    sslengine eval clusters RUN [--k 10] [--source auto]
    sslengine eval jobs RUN [--status failed]   (queued evaluations; why failed ones failed)

Every command takes ``--param key=value`` (repeatable) for any other parameter of the kind
(see ``sslengine.eval.jobs.PARAMS``), ``--queue`` to send it to a worker instead of running it
in this process, and ``--json`` for machine-readable output.
"""

from __future__ import annotations

import json
from typing import Any

import typer
import yaml

eval_app = typer.Typer(
    no_args_is_help=True, help="Evaluate a run's checkpoint: kNN, probes, retrieval, clusters."
)

STEP_HELP = "checkpoint step (default: the latest)"
QUEUE_HELP = "send to a Celery worker (--queue) or run in this process (--local)"
PARAM_HELP = "another parameter of this evaluation, key=value (repeatable)"


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _params(pairs: list[str], **named: Any) -> dict[str, Any]:
    out = {k: v for k, v in named.items() if v is not None}
    for pair in pairs:
        if "=" not in pair:
            _fail(f"--param '{pair}' must look like key=value")
        key, value = pair.split("=", 1)
        out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return out


def _store():
    from sslengine.store import Store, migrate

    migrate()
    return Store.default()


# accuracy-like metrics first in the table; the store keeps keys sorted alphabetically
_FIRST = ("top1", "top5", "knn_top1_k20", "knn_top1_k200", "precision_at_10", "k", "source")


def _rows_table(rows: list[dict[str, Any]]) -> str:
    found = {k for r in rows for k in r["metrics"]}
    keys = [k for k in _FIRST if k in found] + sorted(found - set(_FIRST))
    head = ["step", "layer", *keys]
    body = []
    for r in rows:
        cells = [str(r["checkpoint_step"]), str(r["layer"])]
        for k in keys:
            v = r["metrics"].get(k, "")
            cells.append(f"{v:.4f}" if isinstance(v, float) else str(v))
        body.append(cells)
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join(lines)


def _run(
    run_id: str,
    kind: str,
    step: int | None,
    layer: str | None,
    params: dict[str, Any],
    queue: bool,
    as_json: bool,
    all_checkpoints: bool = False,
    queue_name: str | None = None,
) -> None:
    store = _store()
    if queue:
        from tasks.evaluate import submit_evaluation
        from tasks.submit import BrokerUnavailable

        try:
            task_id = submit_evaluation(
                run_id, kind, step, layer, params, all_checkpoints, store=store, queue=queue_name
            )
        except (ValueError, BrokerUnavailable) as err:
            _fail(str(err))
        jobs = [j for j in store.list_eval_jobs(run_id) if j.task_id == task_id]
        job_id = jobs[0].id if jobs else None
        if as_json:
            typer.echo(json.dumps({"task_id": task_id, "job_id": job_id}))
        else:
            typer.echo(f"queued evaluation job {job_id} (task {task_id}); "
                       f"see: sslengine eval jobs {run_id}")  # fmt: skip
        return
    from sslengine.eval.jobs import probe_over_training, run_evaluation

    try:
        if all_checkpoints:
            ids = probe_over_training(store, run_id, layer, params, progress=True)
        else:
            ids = run_evaluation(store, run_id, kind, step, layer, params, progress=True)
    except ValueError as err:
        _fail(str(err))
    wanted = set(ids)
    rows = [
        {
            "id": r.id,
            "kind": r.kind,
            "checkpoint_step": r.checkpoint_step,
            "layer": r.layer,
            "metrics": r.metrics,
            "artifact_path": r.artifact_path,
        }
        for r in store.list_eval_results(run_id, kind)
        if r.id in wanted
    ]
    typer.echo(json.dumps(rows, indent=1) if as_json else _rows_table(rows))


_QUEUE = typer.Option(False, "--queue/--local", help=QUEUE_HELP)
_QUEUE_NAME = typer.Option(None, "--queue-name", help="Celery queue (default: ssl)")
_JSON = typer.Option(False, "--json", help="print JSON")
_STEP = typer.Option(None, "--step", help=STEP_HELP)
_PARAM = typer.Option([], "--param", help=PARAM_HELP)


@eval_app.command()
def knn(
    run_id: str,
    step: int = _STEP,
    tap: str = typer.Option("pooled", help="feature tap"),
    param: list[str] = _PARAM,
    queue: bool = _QUEUE,
    queue_name: str = _QUEUE_NAME,
    as_json: bool = _JSON,
) -> None:
    """Weighted kNN top-1 (k 20 and 200) on frozen features."""
    _run(run_id, "knn", step, tap, _params(param), queue, as_json, queue_name=queue_name)


@eval_app.command()
def probe(
    run_id: str,
    step: int = _STEP,
    all_checkpoints: bool = typer.Option(False, "--all-checkpoints", help="every checkpoint"),
    layer: str = typer.Option("all", help="'all' or taps, e.g. conv1,layer4"),
    epochs: int = typer.Option(None, help="probe epochs (default 28)"),
    param: list[str] = _PARAM,
    queue: bool = _QUEUE,
    queue_name: str = _QUEUE_NAME,
    as_json: bool = _JSON,
) -> None:
    """Linear probe of every layer (Goyal et al. 2019), one row per tap."""
    if all_checkpoints and step is not None:
        _fail("--all-checkpoints and --step exclude each other")
    params = _params(param, epochs=epochs)
    _run(run_id, "probe", step, layer, params, queue, as_json, all_checkpoints, queue_name)


@eval_app.command()
def finetune(
    run_id: str,
    step: int = _STEP,
    epochs: int = typer.Option(None, help="fine-tuning epochs (default 10)"),
    param: list[str] = _PARAM,
    queue: bool = _QUEUE,
    queue_name: str = _QUEUE_NAME,
    as_json: bool = _JSON,
) -> None:
    """Fine-tune backbone + linear head on the labelled training split."""
    params = _params(param, epochs=epochs)
    _run(run_id, "finetune", step, "all", params, queue, as_json, queue_name=queue_name)


@eval_app.command()
def retrieval(
    run_id: str,
    step: int = _STEP,
    tap: str = typer.Option("pooled", help="feature tap"),
    index_type: str = typer.Option(None, help="auto, flat, ivf or hnsw"),
    param: list[str] = _PARAM,
    queue: bool = _QUEUE,
    queue_name: str = _QUEUE_NAME,
    as_json: bool = _JSON,
) -> None:
    """Embeddings + faiss index of the test split; precision@10 when labelled."""
    params = _params(param, index_type=index_type)
    _run(run_id, "retrieval", step, tap, params, queue, as_json, queue_name=queue_name)


@eval_app.command()
def clusters(
    run_id: str,
    step: int = _STEP,
    tap: str = typer.Option("pooled", help="feature tap (k-means)"),
    k: int = typer.Option(None, "--k", help="clusters (default: classes, else 100)"),
    source: str = typer.Option(None, help="auto, prototypes (SwAV) or kmeans"),
    param: list[str] = _PARAM,
    queue: bool = _QUEUE,
    queue_name: str = _QUEUE_NAME,
    as_json: bool = _JSON,
) -> None:
    """Cluster assignments: SwAV's prototypes, or spherical k-means for other methods."""
    params = _params(param, k=k, source=source)
    _run(run_id, "clusters", step, tap, params, queue, as_json, queue_name=queue_name)


def _job_dict(j) -> dict[str, Any]:
    return {
        "id": j.id,
        "run_id": j.run_id,
        "kind": j.kind,
        "checkpoint_step": j.checkpoint_step,
        "all_checkpoints": j.all_checkpoints,
        "layer": j.layer,
        "params": j.params,
        "status": j.status,
        "error": j.error,
        "result_ids": j.result_ids,
        "task_id": j.task_id,
        "worker_host": j.worker_host,
        "log_path": j.log_path,
        "created_at": j.created_at.isoformat(),
        "started_at": j.started_at.isoformat() if j.started_at else None,
        "finished_at": j.finished_at.isoformat() if j.finished_at else None,
    }


@eval_app.command()
def jobs(
    run_id: str,
    status: str = typer.Option(None, help="only jobs in this state (queued, running, ...)"),
    as_json: bool = _JSON,
) -> None:
    """Evaluations sent through the queue: their state, and the error of the failed ones."""
    from sslengine.store import EVAL_JOB_STATUSES

    if status is not None and status not in EVAL_JOB_STATUSES:
        _fail(f"unknown status '{status}'; choose from: {', '.join(EVAL_JOB_STATUSES)}")
    store = _store()
    if store.get_run(run_id) is None:
        _fail(f"run {run_id} does not exist")
    found = store.list_eval_jobs(run_id, status)
    if as_json:
        typer.echo(json.dumps([_job_dict(j) for j in found], indent=1))
        return
    if not found:
        typer.echo("no evaluation jobs")
        return
    head = ["id", "kind", "step", "layer", "status", "submitted", "error"]
    body = []
    for j in found:
        step = "all" if j.all_checkpoints else str(j.checkpoint_step)
        error = " | ".join(line.strip() for line in (j.error or "").splitlines() if line.strip())
        body.append(
            [
                str(j.id),
                j.kind,
                step,
                j.layer or "-",
                j.status,
                j.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                error if len(error) <= 200 else error[:199] + "…",
            ]
        )
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    typer.echo("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip())
    for b in body:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)).rstrip())
