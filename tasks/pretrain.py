"""The pretraining task: receives only a run id (JSON), supervises the run's process group."""

from __future__ import annotations

from tasks.celery_app import app


@app.task(name="sslengine.pretrain")
def pretrain_run(run_id: str) -> str:
    from sslengine.train.supervisor import supervise_run

    return supervise_run(run_id).status
