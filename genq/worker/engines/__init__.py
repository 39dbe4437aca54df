"""Generation engines behind one small interface (see :mod:`genq.worker.engines.base`)."""

from __future__ import annotations

import logging

from genq.errors import WorkerConfigError
from genq.settings import Settings
from genq.worker.engines.base import Engine, Generation, Prepared

__all__ = ["Engine", "Generation", "Prepared", "load_engine"]


def load_engine(settings: Settings) -> Engine:
    """Create the engine named by ``settings.engine`` (loading its model once), wrapped in the
    fault injector when GENQ_FAULTS holds a fault plan. A GENQ_CHAT_TEMPLATE that is not valid
    Jinja stops the worker here, before the model loads."""
    if settings.chat_template is not None and settings.engine != "null":
        from genq.worker.engines.chat import ChatTemplateError, check_template

        try:
            check_template(settings.chat_template)
        except ChatTemplateError as e:
            raise WorkerConfigError(str(e)) from e
    engine = _load(settings)
    if settings.faults:
        from pydantic import ValidationError

        from genq.worker.engines.faults import FaultPlan, FaultyEngine

        try:
            plan = FaultPlan.model_validate_json(settings.faults)
        except ValidationError as e:
            raise WorkerConfigError(f"GENQ_FAULTS is not a valid fault plan: {e}") from e
        logging.getLogger("genq.worker").warning("FAULT INJECTION ENABLED: %s", plan)
        return FaultyEngine(engine, plan)
    return engine


def _load(settings: Settings) -> Engine:
    if settings.engine == "null":
        from genq.worker.engines.null import NullEngine

        return NullEngine()
    if settings.engine == "ct2":
        try:
            from genq.worker.engines.ct2 import CT2Engine
        except ImportError as e:
            raise WorkerConfigError(
                "GENQ_ENGINE=ct2 needs CTranslate2: pip install 'genq[ct2]'"
            ) from e

        return CT2Engine.load(settings)
    from genq.worker.engines.hf import HFEngine

    return HFEngine.load(settings.model, settings.device)
