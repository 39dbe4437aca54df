"""User-given text, validated once for every side: real strings that UTF-8 can write (no lone
surrogates), with their length limits; and how a bad value is shown in a one-line error."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BeforeValidator, Strict, StringConstraints
from pydantic_core import PydanticCustomError

from genq import settings as defaults

SHOWN_CHARS = 40  # of a bad value, error messages show this much


def shown(value: object) -> str:
    """``value`` as an error message shows it: JSON spelling for JSON values (``true``,
    ``null``, ``"12"``), a kind for containers, shortened, and printable whatever it holds
    (a lone surrogate or a control character appears escaped)."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int | float):
        text = repr(value)
        if isinstance(value, int) and len(text) > SHOWN_CHARS:
            return f"an integer of {len(text)} digits"
        return {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}.get(text, text)
    if isinstance(value, str):
        # JSON escapes quotes and C0 controls; the rest that would not print as itself (a lone
        # surrogate, NEL, U+2028, which also end a line for str.splitlines) is escaped here.
        text = "".join(
            c if c.isprintable() else f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}"
            for c in json.dumps(value[:SHOWN_CHARS], ensure_ascii=False)
        )
        return text[:-1] + '..."' if len(value) > SHOWN_CHARS else text
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "an array"
    return f"a {type(value).__name__}"


def _valid_unicode(value: Any) -> Any:
    # A lone surrogate (JSON "\ud800", or an undecodable byte in a command-line argument) is a
    # str to Python but no UTF-8 encoder can write it: it would fail in Redis or Celery later.
    # Checked before the str validation, which would call it "unable to parse raw data".
    if isinstance(value, str) and not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise PydanticCustomError(
                "lone_surrogate",
                "contains a lone surrogate ({char}) at character {at}; text must be valid Unicode",
                {"char": f"\\u{ord(value[e.start]):04x}", "at": e.start},
            ) from None
    return value


# Every user-given string: a real str (no number read as text) that can be written as UTF-8.
# NUL and other control characters are valid Unicode and serialise (JSON escapes them), so
# they are accepted; the model sees them as any other character. Length limits go inside the
# Annotated (StringConstraints), so that they keep pydantic's "String should have at most N
# characters" wherever the type is nested (Optional, dict keys).
Text = Annotated[str, Strict(), BeforeValidator(_valid_unicode)]
CustomId = Annotated[
    str,
    StringConstraints(strict=True, min_length=1, max_length=defaults.MAX_CUSTOM_ID_CHARS),
    BeforeValidator(_valid_unicode),
]
MetadataKey = Annotated[
    str,
    StringConstraints(strict=True, min_length=1, max_length=defaults.MAX_METADATA_KEY_CHARS),
    BeforeValidator(_valid_unicode),
]
MetadataValue = Annotated[
    str,
    StringConstraints(strict=True, max_length=defaults.MAX_METADATA_VALUE_CHARS),
    BeforeValidator(_valid_unicode),
]
IdempotencyKey = Annotated[
    str,
    StringConstraints(strict=True, min_length=1, max_length=defaults.MAX_IDEMPOTENCY_KEY_CHARS),
    BeforeValidator(_valid_unicode),
]
