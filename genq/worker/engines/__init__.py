"""Generation engines behind one small interface (see :mod:`genq.worker.engines.base`).

Adding an engine takes one module whose class has ``load(settings)`` and one entry in
:data:`ENGINES`.
"""

from __future__ import annotations

import logging
from importlib import import_module
from typing import TYPE_CHECKING

from genq.errors import WorkerConfigError
from genq.settings import Settings
from genq.worker.engines.base import Engine, EngineClass, Generation, Prepared

__all__ = ["ENGINES", "Engine", "Generation", "Prepared", "engine_class", "load_engine"]

# GENQ_ENGINE -> "module:Class", imported only when chosen: `null` never imports torch.
ENGINES: dict[str, str] = {
    "hf": "genq.worker.engines.hf:HFEngine",
    "ct2": "genq.worker.engines.ct2:CT2Engine",
    "null": "genq.worker.engines.null:NullEngine",
}
# Engines whose dependencies are an optional extra of genq's: what a failed import lacks.
EXTRAS: dict[str, str] = {"ct2": "CTranslate2"}

if TYPE_CHECKING:
    from genq.worker.engines.ct2 import CT2Engine
    from genq.worker.engines.hf import HFEngine
    from genq.worker.engines.null import NullEngine

    # The table is resolved at run time, so mypy checks the interface of its classes here.
    _CHECKED: tuple[EngineClass, ...] = (HFEngine, CT2Engine, NullEngine)


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
    engine = engine_class(settings.engine).load(settings)
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


def engine_class(name: str) -> EngineClass:
    """The engine class ``name`` stands for in :data:`ENGINES`, imported now."""
    if name not in ENGINES:
        raise WorkerConfigError(f"GENQ_ENGINE={name} is not one of {', '.join(ENGINES)}")
    module_name, _, class_name = ENGINES[name].partition(":")
    try:
        module = import_module(module_name)
    except ImportError as e:
        if name not in EXTRAS:
            raise
        raise WorkerConfigError(
            f"GENQ_ENGINE={name} needs {EXTRAS[name]}: pip install 'genq[{name}]'"
        ) from e
    found: EngineClass = vars(module)[class_name]
    return found
