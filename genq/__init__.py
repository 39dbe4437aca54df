"""genq: asynchronous batch text generation on Redis and Celery.

The package root stays import-light: ``from genq import Client`` loads the producer side only
(no torch, no transformers), so a content pipeline can submit jobs without a GPU stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from genq.producer.client import Client

__all__ = ["Client", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Client":
        from genq.producer.client import Client

        return Client
    raise AttributeError(name)
