"""The request side of ``POST /v1/batches``: its body (``BatchCreate``, with
``OutputExpiresAfter``) and the completion window it names, parsed to seconds
(``window_s``)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from genq.api.errors import ApiError
from genq.settings import MAX_BATCH_METADATA_ITEMS, MAX_EXPIRES_IN_S
from genq.text import MetadataKey, MetadataValue

_WINDOW = re.compile(r"^([1-9][0-9]{0,6})(s|m|h|d)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class OutputExpiresAfter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    anchor: Literal["created_at"]
    seconds: int = Field(ge=3600, le=2_592_000, strict=True)


class BatchCreate(BaseModel):
    """The body of ``POST /v1/batches``."""

    model_config = ConfigDict(extra="forbid")
    input_file_id: str
    endpoint: str
    completion_window: str = "24h"
    metadata: dict[MetadataKey, MetadataValue] | None = Field(
        None, max_length=MAX_BATCH_METADATA_ITEMS
    )
    output_expires_after: OutputExpiresAfter | None = None


def window_s(window: str) -> int:
    """A completion window ("24h", genq also takes s/m/d units) in seconds; 400 if invalid."""
    match = _WINDOW.match(window)
    seconds = int(match.group(1)) * _UNIT_S[match.group(2)] if match else 0
    if not match or seconds > MAX_EXPIRES_IN_S:
        raise ApiError(
            400,
            f"completion_window {window[:20]!r} is not supported: use '24h' "
            f"(genq takes any window of s/m/h/d up to {MAX_EXPIRES_IN_S // 86400}d)",
            param="completion_window",
            code="invalid_value",
        )
    return seconds
