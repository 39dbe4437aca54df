"""Generation engines behind one small interface (see :mod:`genq.worker.engines.base`)."""

from __future__ import annotations

from genq.errors import WorkerConfigError
from genq.settings import Settings
from genq.worker.engines.base import Engine, Generation, Prepared

__all__ = ["Engine", "Generation", "Prepared", "load_engine"]


def load_engine(settings: Settings) -> Engine:
    """Create the engine named by ``settings.engine``, loading its model once."""
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
