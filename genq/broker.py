"""The Celery app both sides share: broker settings, serialisation and the task's name.

The producer sends tasks by name through this app and never imports the worker; the worker
registers its batch task on the same configuration.

Celery's own tools reach genq's broker through this module: ``celery -A genq.broker inspect
ping`` (or ``events``, or Flower where it is installed: ``celery -A genq.broker flower``) builds
the app from the GENQ_* variables, genq's key prefix included (a bare ``--broker`` URL would
miss it). Workers answer them only with GENQ_CELERY_EVENTS=1.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from celery import Celery

from genq import leases
from genq.sentinel import kombu_broker, kombu_ssl
from genq.settings import Settings

GENERATE_TASK = "genq.generate"


def celery_app(settings: Settings) -> Celery:
    """A Celery app configured for genq's broker (no tasks registered)."""
    # A sentinel:// URL (genq's form, genq.sentinel) becomes kombu's, plus its master_name.
    broker_url, sentinel_options = kombu_broker(settings.redis_url)
    app = Celery("genq", broker=broker_url, set_as_current=False)
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
        broker_transport_options={
            **leases.transport_options(settings.lease_s),
            **sentinel_options,
        },
        # GENQ_CELERY_EVENTS=1: events (the worker's heartbeats, which Flower needs) and remote
        # control (`celery inspect`), over Redis pub/sub (the ACL needs those channels: README).
        # No task-sent events: genq's worker admits messages into its engine loop and runs no
        # Celery task, so no task-received/succeeded event would ever follow them.
        worker_send_task_events=settings.celery_events,
        worker_enable_remote_control=settings.celery_events,
        enable_utc=True,
    )
    if settings.redis_url.lower().startswith("rediss://"):
        # kombu's default for a rediss:// URL is CERT_NONE (no verification); verify the server
        # like redis-py (the result store) does. ssl_* parameters in the URL (ssl_ca_certs=...)
        # replace this dict, and go to redis-py as they do for the store.
        app.conf.broker_use_ssl = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    sentinel_tls = kombu_ssl(settings.redis_url)
    if sentinel_tls is not None:  # sentinel://...?ssl=true: the primary's connections
        app.conf.broker_use_ssl = sentinel_tls
    return app


if not TYPE_CHECKING:  # hidden from mypy, which would type every missing name as this

    def __getattr__(name: str) -> Celery:
        """``genq.broker.app``, what ``celery -A genq.broker`` looks for: the app for the
        GENQ_* variables (built when asked for)."""
        if name == "app":
            from genq.settings import load_settings

            return celery_app(load_settings())
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
