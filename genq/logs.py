"""Log lines of genq's processes: text (as Celery and uvicorn write them) or JSON lines.

GENQ_LOG_FORMAT=json makes every log record of a worker or of ``genq api`` (genq's own,
Celery's, kombu's, uvicorn's) one JSON object on one line of stderr: ``ts`` (ISO 8601, UTC),
``level``, ``logger``, ``message``, the record's structured fields as top-level keys (the batch
line's ``worker``, ``size``, ``items``, ``prompt_tokens``, ``tokens``, ``ms``, ``engine``), and
``exc``, the traceback of an exception, as one JSON string (its newlines escaped, so a
traceback never breaks a line). Text (the default) leaves logging as it was: Celery configures
the worker's, uvicorn the API's.

Prompt and result text are never logged, in either format, unless GENQ_LOG_PROMPTS=1; then the
batch line carries its first item's prompt, cut to :data:`PROMPT_CHARS` characters.
"""

from __future__ import annotations

import importlib
import json
import logging
import logging.config
import os
import sys
import threading
from datetime import datetime, timezone
from types import TracebackType
from typing import Any

from genq.settings import Settings

PROMPT_CHARS = 200  # of the first prompt, on the batch line (GENQ_LOG_PROMPTS=1 only)

# What every LogRecord carries: anything else on a record is a structured field (``extra=``).
_RECORD_ATTRIBUTES = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
_NOT_FIELDS = _RECORD_ATTRIBUTES | {"color_message"}  # uvicorn's message again, in ANSI colours


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: ts, level, logger, message, the record's
    extra fields, and ``exc``/``stack`` as single strings."""

    # Written here rather than taken from python-json-logger: that is not one of genq's
    # dependencies, and what genq needs (four fixed keys, the extras as top-level keys, one
    # line per record) is a few lines of the standard library.
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _NOT_FIELDS and not key.startswith("_"):
                entry.setdefault(key, value)  # a field never replaces one of the fixed keys
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def json_config(level: int | str = logging.INFO) -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` dictionary: the root logger writes JSON lines to
    stderr; every other logger (Celery's, kombu's, uvicorn's) only propagates to it."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level},
        # uvicorn's own configuration gives these handlers that do not propagate.
        "loggers": {
            name: {"handlers": [], "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }


def configure_logging(settings: Settings, level: int | str = logging.INFO) -> bool:
    """Set up this process's logging for ``settings.log_format``: JSON lines on stderr (True),
    or nothing for text (False: Celery or uvicorn configure it, as they always did)."""
    if settings.log_format != "json":
        return False
    logging.config.dictConfig(json_config(level))
    logging.captureWarnings(True)  # a warning is a record too, not lines of its own
    # Hugging Face's progress bars (model loading) redraw one line with carriage returns.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    return True


def uvicorn_log_config(settings: Settings) -> dict[str, Any]:
    """uvicorn's ``log_config`` for ``genq api``: JSON lines, or uvicorn's own
    (``uvicorn.config.LOGGING_CONFIG``, what ``genq api`` always used) for text."""
    if settings.log_format != "json":
        from uvicorn.config import LOGGING_CONFIG

        return LOGGING_CONFIG
    return json_config()


def hand_celery_logging_to_genq() -> None:
    """Keep a worker's Celery off the logging that :func:`configure_logging` set up (JSON).

    A receiver of Celery's ``setup_logging`` signal makes the worker skip its own setup (it
    would replace the root logger's handlers: ``worker_hijack_root_logger``); it only takes the
    worker's ``--loglevel``. What bypasses logging becomes records too: prints (as Celery's
    ``worker_redirect_stdouts`` does for text logs, but from now on: the engine loads next) and
    Celery's notices written straight to stdout (``worker: Warm shutdown``). Its banner is
    for the worker to turn off (``--quiet``).
    """
    from celery import signals
    from celery.apps import worker as celery_worker
    from celery.utils.log import LoggingProxy

    # The root logger's handler keeps the real stderr: it was made before this.
    sys.stdout = sys.stderr = LoggingProxy(logging.getLogger("celery.redirected"), logging.WARNING)

    def keep_genq_logging(loglevel: int | str | None = None, **_: Any) -> None:
        if loglevel:
            logging.getLogger().setLevel(loglevel)
        # transformers gives its loggers a handler of their own that does not propagate (it
        # writes to the redirected stderr meanwhile); an engine that uses it has loaded it.
        if "transformers" in sys.modules:
            hf_logging = importlib.import_module("transformers.utils.logging")
            hf_logging.disable_default_handler()
            hf_logging.enable_propagation()

    def say(msg: str, f: Any = None) -> None:
        logging.getLogger("celery.apps.worker").warning("%s", msg.strip())

    signals.setup_logging.connect(keep_genq_logging, weak=False, dispatch_uid=__name__)
    celery_worker.safe_say = say
    # An uncaught exception's traceback would reach the redirected stderr one write at a time:
    # a record per line. Logged instead, it is one record with its `exc`.
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def _log_uncaught(
    kind: type[BaseException], value: BaseException, traceback: TracebackType | None
) -> None:
    logging.getLogger("genq").critical("uncaught exception", exc_info=(kind, value, traceback))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    thread = args.thread.name if args.thread is not None else "?"
    logging.getLogger("genq").critical(
        "uncaught exception in thread %s",
        thread,
        exc_info=(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback),
    )


def log_batch(
    logger: logging.Logger,
    settings: Settings,
    *,
    worker: str,
    engine: str,
    size: int,
    items: int,
    prompt_tokens: int,
    tokens: int,
    ms: float,
    prompt: str | None = None,
) -> None:
    """The INFO line of one batch: ``size`` sequences for ``items`` items, their prompt and
    generated tokens, and its wall time. ``prompt`` (the first item's) is logged only with
    GENQ_LOG_PROMPTS=1, cut to :data:`PROMPT_CHARS` characters."""
    if not logger.isEnabledFor(logging.INFO):
        return
    fields: dict[str, Any] = {
        "worker": worker,
        "size": size,
        "items": items,
        "prompt_tokens": prompt_tokens,
        "tokens": tokens,
        "ms": round(ms),
        "engine": engine,
    }
    if settings.log_prompts and prompt is not None:
        fields["prompt"] = prompt[:PROMPT_CHARS]
    # The text line shows the fields too; the prompt as a repr, so its newlines stay escaped.
    text = " ".join(f"{k}={v!r}" if k == "prompt" else f"{k}={v}" for k, v in fields.items())
    logger.info("batch %s", text, extra=fields)
