"""Generation parameters: what one item asks the model for (job defaults merged with the item's
overrides), and the limits every side checks them against."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from genq import settings as defaults
from genq.text import Text, shown


class GenerationParams(BaseModel):
    """Generation parameters of one item (job defaults merged with the item's overrides).

    ``max_length`` is the seed tutorial's total length (prompt + new tokens); the worker turns it
    into ``max_new_tokens`` once the prompt is tokenised. Give one of the two, not both.
    """

    # Strict: a bool or a string is never read as a number (JSON `true` is not 1, "12" is not
    # 12), a number never as a bool; an int is still a valid float. No NaN or Infinity.
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int | None = Field(None, strict=True, ge=1, le=defaults.MAX_NEW_TOKENS_LIMIT)
    max_length: int | None = Field(None, strict=True, ge=2, le=defaults.MAX_NEW_TOKENS_LIMIT * 2)
    do_sample: bool = Field(True, strict=True)
    temperature: float = Field(
        defaults.DEFAULT_TEMPERATURE, strict=True, allow_inf_nan=False, gt=0.0, le=100.0
    )
    top_k: int = Field(defaults.DEFAULT_TOP_K, strict=True, ge=0, le=1_000_000)
    top_p: float = Field(defaults.DEFAULT_TOP_P, strict=True, allow_inf_nan=False, gt=0.0, le=1.0)
    num_return_sequences: int = Field(1, strict=True, ge=1, le=defaults.MAX_RETURN_SEQUENCES)
    repetition_penalty: float = Field(1.0, strict=True, allow_inf_nan=False, gt=0.0, le=10.0)
    stop: tuple[Text, ...] = ()
    seed: int | None = Field(None, strict=True, ge=0, le=2**63 - 1)
    # A prompt too long for the model's context with max_new_tokens: fail the item (default),
    # or keep its last tokens (the start of the prompt is dropped).
    truncate: bool = Field(False, strict=True)

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, value: Any) -> Any:
        """One string or a list of at most MAX_STOP_STRINGS non-empty strings of at most
        MAX_STOP_CHARS characters each (checked here, before anything copies them)."""
        if value is None:
            return ()
        if isinstance(value, str):
            value = (value,)
        if not isinstance(value, list | tuple):
            raise PydanticCustomError(
                "stop_type",
                "expected a string or a list of strings, got {got}",
                {"got": shown(value)},
            )
        if len(value) > defaults.MAX_STOP_STRINGS:
            raise PydanticCustomError(
                "too_many_stop_strings",
                "{count} stop strings given; at most {limit} are allowed",
                {"count": len(value), "limit": defaults.MAX_STOP_STRINGS},
            )
        for position, stop in enumerate(value):
            if not isinstance(stop, str):
                raise PydanticCustomError(
                    "stop_type",
                    "stop string {position}: expected a string, got {got}",
                    {"position": position, "got": shown(stop)},
                )
            if not stop:
                raise PydanticCustomError(
                    "empty_stop_string",
                    "stop strings must not be empty (stop string {position})",
                    {"position": position},
                )
            if len(stop) > defaults.MAX_STOP_CHARS:
                raise PydanticCustomError(
                    "stop_string_too_long",
                    "stop string {position} is {length} characters long; "
                    "the limit is {limit} characters",
                    {"position": position, "length": len(stop), "limit": defaults.MAX_STOP_CHARS},
                )
        return tuple(value)

    @model_validator(mode="after")
    def _one_length_limit(self) -> GenerationParams:
        if self.max_new_tokens is not None and self.max_length is not None:
            raise ValueError("give max_new_tokens or max_length (prompt + new tokens), not both")
        if self.num_return_sequences > 1 and not self.do_sample:
            raise ValueError(
                "num_return_sequences > 1 needs sampling (greedy decoding would return the same "
                "output every time); drop --greedy / do_sample=false"
            )
        if self.max_new_tokens is None and self.max_length is None:
            object.__setattr__(self, "max_new_tokens", defaults.DEFAULT_MAX_NEW_TOKENS)
        return self

    def with_overrides(self, overrides: Mapping[str, Any] | None) -> GenerationParams:
        """Return these parameters with ``overrides`` applied (validated; unknown keys refused).

        An override of one length limit replaces the other, so a job default of
        ``max_new_tokens`` and an item's ``max_length`` do not conflict.
        """
        if not overrides:
            return self
        base = self.model_dump(exclude_unset=True, exclude_defaults=False)
        if "max_length" in overrides or "max_new_tokens" in overrides:
            base.pop("max_length", None)
            base.pop("max_new_tokens", None)
        return GenerationParams.model_validate({**base, **overrides})
