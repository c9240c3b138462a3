"""Celery adapters: they move a run id to a process; the work itself lives in sslengine."""
