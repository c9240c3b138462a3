"""`sslengine` command line: pretrain here, submit to the queue, inspect runs, bring up services."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer

from sslengine.config import ConfigError, ExperimentConfig, load_config

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Self-supervised pretraining: library, queue and dashboard.",
)
runs_app = typer.Typer(no_args_is_help=True, help="Inspect and control stored runs.")
app.add_typer(runs_app, name="runs")


def _mount_eval() -> None:
    from sslengine.cli_eval import eval_app

    app.add_typer(eval_app, name="eval", help="Evaluate a run's checkpoints (probe, kNN, ...).")


_mount_eval()

SET_HELP = "override a config value, e.g. --set train.batch_size=64 (repeatable)"


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _config(path: Path | None, overrides: list[str]) -> ExperimentConfig:
    try:
        return load_config(path, overrides)
    except ConfigError as err:
        _fail(f"invalid config:\n{err}")
    raise AssertionError  # unreachable


def _store():
    from sslengine.store import Store, migrate

    migrate()
    return Store.default()


@app.command()
def pretrain(
    config: Path = typer.Argument(None, help="YAML config (defaults when omitted)"),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    name: str = typer.Option("", help="run name"),
) -> None:
    """Pretrain in this process (tqdm progress); the run is recorded in the store too."""
    from sslengine.store.artifacts import run_artifact_dir
    from sslengine.train.loop import Cancelled
    from sslengine.train.loop import pretrain as run_pretrain
    from sslengine.train.reporter import StoreReporter, TqdmReporter

    cfg = _config(config, set_)
    store = _store()
    run_id = store.create_run(
        cfg.model_dump(mode="json"),
        name=name or cfg.name or cfg.method,
        method=cfg.method,
        dataset=cfg.dataset.name,
        backbone=cfg.backbone.name,
        owner="cli",
    )
    store.set_status(run_id, "running")
    typer.echo(f"run {run_id}")
    reporter = TqdmReporter(StoreReporter(store, run_id))
    try:
        result = run_pretrain(cfg, run_artifact_dir(run_id) / "checkpoints", reporter=reporter)
    except Cancelled:
        store.set_status(run_id, "cancelled")
        raise typer.Exit(3) from None
    except Exception as err:
        store.set_status(run_id, "failed", error=f"{type(err).__name__}: {err}")
        reporter.close()
        _fail(f"{type(err).__name__}: {err}", code=1)
    reporter.close()
    store.set_status(run_id, "succeeded")
    typer.echo(json.dumps({k: round(v, 4) for k, v in result.items()}))


@app.command()
def submit(
    config: Path = typer.Argument(None, help="YAML config (defaults when omitted)"),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    name: str = typer.Option("", help="run name"),
    notes: str = typer.Option("", help="free-text notes"),
    queue: str = typer.Option(None, help="Celery queue (default: ssl)"),
) -> None:
    """Validate and enqueue a run through Celery; prints the run id."""
    from tasks.submit import BrokerUnavailable
    from tasks.submit import submit as submit_run

    cfg = _config(config, set_)
    try:
        run_id = submit_run(cfg, name=name, notes=notes, store=_store(), queue=queue)
    except BrokerUnavailable as err:
        _fail(str(err))
    typer.echo(run_id)


@app.command()
def validate(
    config: Path = typer.Argument(None),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
) -> None:
    """Check a config and print it fully resolved (YAML)."""
    typer.echo(_config(config, set_).to_yaml())


def _run_dict(r) -> dict:
    from dataclasses import asdict

    d = asdict(r)
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in d.items()}


@runs_app.command("list")
def runs_list(
    as_json: bool = typer.Option(False, "--json"),
    status: str = typer.Option(None, help="filter by status"),
) -> None:
    runs = _store().list_runs(status=status)
    if as_json:
        typer.echo(
            json.dumps(
                [{k: v for k, v in _run_dict(r).items() if k != "config"} for r in runs], indent=1
            )
        )
        return
    for r in runs:
        typer.echo(
            f"{r.id}  {r.status:<10} {r.method:<14} {r.dataset:<12} "
            f"{r.progress * 100:5.1f}%  {r.name}"
        )


@runs_app.command("show")
def runs_show(run_id: str, as_json: bool = typer.Option(False, "--json")) -> None:
    store = _store()
    r = store.get_run(run_id)
    if r is None:
        _fail(f"run {run_id} does not exist")
    d = _run_dict(r)
    d["metrics"] = {k: store.last_metric(run_id, k) for k in store.metric_keys(run_id)}
    if as_json:
        typer.echo(json.dumps(d, indent=1))
        return
    for k, v in d.items():
        if k != "config":
            typer.echo(f"{k:>16}: {v}")


@runs_app.command("cancel")
def runs_cancel(run_id: str) -> None:
    from tasks.submit import cancel

    try:
        cancel(run_id, store=_store())
    except KeyError as err:
        _fail(str(err.args[0]))
    typer.echo(f"cancel requested for {run_id}")


@app.command()
def migrate() -> None:
    """Create or upgrade the store's tables (Alembic)."""
    from sslengine.store import migrate as do_migrate

    do_migrate()
    typer.echo("store is up to date")


@app.command()
def worker(
    queue: str = typer.Option(None, "-Q", help="queue to consume (default: $SSL_QUEUE or ssl)"),
    concurrency: int = typer.Option(1, "-c"),
) -> None:
    """Start one Celery worker (one training slot per process)."""
    from sslengine.services import ensure_redis, start_worker

    try:
        ensure_redis()
    except RuntimeError as err:
        _fail(str(err))
    sys.exit(start_worker(queue, concurrency).wait())


@app.command()
def up(
    port: int = typer.Option(8501, help="dashboard port"), address: str = typer.Option("127.0.0.1")
) -> None:
    """Redis (embedded if none answers), migrations, one worker and the dashboard; Ctrl-C stops."""
    import signal

    from sslengine.services import ensure_redis, start_app, start_worker, stop_all
    from sslengine.settings import redis_url

    def interrupt(signum, frame):  # SIGTERM / SIGHUP (docker stop, kill, a closed terminal)
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)
    # A shell that starts `up` in the background leaves SIGINT ignored: Ctrl-C must still stop.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    procs = []
    try:
        try:
            redis_proc = ensure_redis()
        except RuntimeError as err:
            _fail(str(err))
        if redis_proc is not None:
            procs.append(redis_proc)
            typer.echo(f"started an embedded Redis at {redis_url()}")
        _store()
        procs.append(start_worker())
        procs.append(start_app(port, address))
        typer.secho(f"dashboard: http://{address}:{port}", fg=typer.colors.GREEN)
        while all(p.poll() is None for p in procs):
            time.sleep(1)
        typer.echo("a service exited; stopping the others")
    except KeyboardInterrupt:
        typer.echo("stopping")
    finally:
        # whatever started so far (also when start-up itself was interrupted or failed); a
        # second Ctrl-C or SIGTERM while stopping must not leave the rest running
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        stop_all(procs[::-1])


if __name__ == "__main__":
    app()
