"""The store: source of truth for runs, metric series, checkpoints and evaluation results.

from sslengine.store import Store, migrate
migrate()                      # once at start-up: Alembic upgrade head
store = Store.default()        # SSL_DATABASE_URL, default $SSL_HOME/var/ssl.db
run_id = store.create_run(cfg, name="simclr r18", method="simclr", dataset="cifar10",
                          backbone="resnet18", total_steps=1000)
store.log_metrics(run_id, [(step, "train/loss", loss, time.time())])
"""

from sslengine.store.artifacts import (
    artifacts_root,
    remove_run_artifacts,
    run_artifact_dir,
    ssl_home,
)
from sslengine.store.db import database_url, dispose_engines, get_engine, migrate
from sslengine.store.downsample import minmax_downsample
from sslengine.store.models import EVAL_JOB_STATUSES, RUN_STATUSES, TERMINAL_STATUSES
from sslengine.store.repository import (
    CheckpointRecord,
    EvalJobRecord,
    EvalResultRecord,
    RunNotFound,
    RunRecord,
    Store,
)

__all__ = [
    "EVAL_JOB_STATUSES",
    "RUN_STATUSES",
    "TERMINAL_STATUSES",
    "CheckpointRecord",
    "EvalJobRecord",
    "EvalResultRecord",
    "RunNotFound",
    "RunRecord",
    "Store",
    "artifacts_root",
    "database_url",
    "dispose_engines",
    "get_engine",
    "migrate",
    "minmax_downsample",
    "remove_run_artifacts",
    "run_artifact_dir",
    "ssl_home",
]
