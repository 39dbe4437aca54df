"""The Celery app both sides share: broker settings, serialisation and the task's name.

The producer sends tasks by name through this app and never imports the worker; the worker
registers its batch task on the same configuration.
"""

from __future__ import annotations

import ssl

from celery import Celery

from genq import leases
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
        # Leases: kombu's ack emulation, renewed by each holder's heartbeat (genq.leases).
        broker_transport_options=leases.transport_options(settings.lease_s),
        worker_send_task_events=False,
        worker_enable_remote_control=False,
        enable_utc=True,
    )
    if settings.redis_url.lower().startswith("rediss://"):
        # kombu's default for a rediss:// URL is CERT_NONE (no verification); verify the server
        # like redis-py (the result store) does. ssl_* parameters in the URL (ssl_ca_certs=...)
        # replace this dict, and go to redis-py as they do for the store.
        app.conf.broker_use_ssl = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    return app
