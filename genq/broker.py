"""The Celery app both sides share: broker settings, serialisation and the task's name.

The producer sends tasks by name through this app and never imports the worker; the worker
registers its batch task on the same configuration.
"""

from __future__ import annotations

from celery import Celery

from genq import keyspace
from genq.settings import Settings

GENERATE_TASK = "genq.generate"


def celery_app(settings: Settings) -> Celery:
    """A Celery app configured for genq's broker (no tasks registered)."""
    app = Celery("genq", broker=settings.redis_url, set_as_current=False)
    app.conf.update(
        # JSON only: a pickled message is refused by the worker, never unpickled.
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        task_default_queue=settings.queue,
        # Acknowledge after the results are written, and hand a message back if the worker
        # process dies mid-task, so an accepted prompt is never dropped.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_transport_options={
            "global_keyprefix": keyspace.celery_prefix(),
            "visibility_timeout": settings.visibility_timeout_s,
        },
        worker_send_task_events=False,
        worker_enable_remote_control=False,
        enable_utc=True,
    )
    return app
