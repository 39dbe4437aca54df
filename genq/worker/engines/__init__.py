"""Generation engines behind one small interface (see :mod:`genq.worker.engines.base`)."""

from __future__ import annotations

from genq.settings import Settings
from genq.worker.engines.base import Engine, Generation, Prepared

__all__ = ["Engine", "Generation", "Prepared", "load_engine"]


def load_engine(settings: Settings) -> Engine:
    """Create the engine named by ``settings.engine``, loading its model once."""
    if settings.engine == "null":
        from genq.worker.engines.null import NullEngine

        return NullEngine()
    from genq.worker.engines.hf import HFEngine

    return HFEngine.load(settings.model, settings.device)
