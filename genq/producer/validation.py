"""Validating a job before anything is written: every item, parameter, option and limit, with
each problem said in one line that names the item (or input line) and the field."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError
from pydantic_core import PydanticSerializationError, to_json

from genq.errors import InvalidJobError
from genq.schema import GenerationParams, JobItem, JobSpec, duplicate_custom_ids
from genq.settings import Settings
from genq.text import SHOWN_CHARS, shown

MAX_PROBLEMS_SHOWN = 20

ItemInput = str | Mapping[str, Any] | JobItem
ParamsInput = GenerationParams | Mapping[str, Any] | None


def with_job_options(
    spec: JobSpec,
    *,
    idempotency_key: str | None = None,
    expires_in_s: float | None = None,
    priority: str | None = None,
) -> JobSpec:
    """``spec`` with the job-level options that are given (the others left as they are)."""
    options = {
        "idempotency_key": idempotency_key,
        "expires_in_s": expires_in_s,
        "priority": priority,
    }
    given = {k: v for k, v in options.items() if v is not None}
    if not given:
        return spec
    try:
        return JobSpec.model_validate({**spec.model_dump(exclude_unset=True), **given})
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
            for err in e.errors(include_url=False)
        )
        raise InvalidJobError(f"invalid job options: {problems}") from None


def validate_job(
    items: Sequence[ItemInput],
    params: ParamsInput,
    settings: Settings,
    *,
    metadata: Mapping[str, str] | None = None,
    labels: Sequence[str] | None = None,
    idempotency_key: str | None = None,
    expires_in_s: float | None = None,
) -> JobSpec:
    """Check every item and parameter of a job, its metadata and options, and that all of it
    can be serialised; raise :class:`InvalidJobError` listing the problems, one line each.

    Needs no Redis: the CLI validates a whole file before it connects to anything, so that no
    bad input gets as far as a job record.
    """
    name = (lambda i: labels[i]) if labels is not None else (lambda i: f"item {i}")
    if isinstance(items, str | bytes | Mapping):
        raise InvalidJobError(
            f"items must be a list of prompts (strings or objects), got {shown(items)}; "
            'wrap a single prompt in a list: ["..."]'
        )
    if not isinstance(items, Sequence):
        try:
            items = list(items)
        except TypeError:
            raise InvalidJobError(
                f"items must be a list of prompts (strings or objects), got {shown(items)}"
            ) from None
    if not items:
        raise InvalidJobError("the job has no items: give at least one prompt")
    limit = settings.max_items_per_job
    if len(items) > limit:
        raise InvalidJobError(
            f"the job has {len(items)} items; the limit is {limit} per job "
            "(split the input, or raise GENQ_MAX_ITEMS_PER_JOB)"
        )
    if params is not None and not isinstance(params, GenerationParams | Mapping):
        raise InvalidJobError(f"job params: expected an object, got {shown(params)}")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise InvalidJobError(f"job metadata: expected an object, got {shown(metadata)}")
    if isinstance(params, GenerationParams):
        # Revalidated: an instance may have been built with model_construct.
        params = {name: getattr(params, name) for name in params.model_fields_set}
    try:
        defaults = GenerationParams.model_validate(dict(params or {}))
    except ValidationError as e:
        raise InvalidJobError(
            _describe("job params", e, fields=_PARAM_FIELDS, unknown_noun="parameter")
        ) from e
    options: dict[str, Any] = {
        "metadata": dict(metadata or {}),
        "idempotency_key": idempotency_key,
        "expires_in_s": expires_in_s,
    }
    try:
        # The job-level fields alone (one stand-in item), before the items are looked at.
        JobSpec.model_validate({"items": [{"prompt": "-"}], **options})
    except ValidationError as e:
        raise InvalidJobError(_describe("job", e)) from e
    problems: list[str] = []
    parsed: list[JobItem] = []
    job_bytes = 0  # of prompts: what the job costs Redis while it waits
    for index, raw in enumerate(items):
        try:
            item = _as_item(raw)
        except ValidationError as e:
            problems.append(_describe(name(index), e, fields=_ITEM_FIELDS))
            continue
        except TypeError:
            problems.append(
                f"{name(index)}: expected a prompt string or an object with a 'prompt', "
                f"got {shown(raw)}"
            )
            continue
        try:
            defaults.with_overrides(item.params)
        except ValidationError as e:
            problems.append(
                _describe(
                    name(index),
                    e,
                    loc_prefix="params.",
                    fields=_PARAM_FIELDS,
                    unknown_noun="parameter",
                )
            )
            continue
        size = len(item.prompt.encode())
        if size > settings.max_prompt_bytes:
            problems.append(
                f"{name(index)}: prompt is {size} bytes; the limit is "
                f"{settings.max_prompt_bytes} (GENQ_MAX_PROMPT_BYTES)"
            )
            continue
        if item.params:
            try:
                # The overrides travel as given (they are echoed in results): they must
                # serialise as they are, whatever Python objects they are.
                to_json(item.params)
            except (PydanticSerializationError, ValueError, TypeError):
                problems.append(f"{name(index)}: params cannot be serialised as JSON")
                continue
        parsed.append(item)
        job_bytes += size
    if job_bytes > settings.max_job_bytes:
        problems.insert(
            0,
            f"the job's prompts hold {job_bytes} bytes; the limit is {settings.max_job_bytes} "
            "per job (split the input, or raise GENQ_MAX_JOB_BYTES)",
        )
    if not problems:
        for index, first, cid in duplicate_custom_ids(parsed):
            problems.append(
                f"{name(index)}: custom_id {cid!r} is already used by {name(first)}; "
                "custom_id must be unique within a job"
            )
    if len(problems) == 1:
        raise InvalidJobError(f"{problems[0]} (nothing was enqueued)")
    if problems:
        listed = problems[:MAX_PROBLEMS_SHOWN]
        more = len(problems) - len(listed)
        tail = f"\n... and {more} more problem(s)" if more else ""
        raise InvalidJobError(
            f"invalid job, nothing was enqueued ({len(problems)} problem(s)):\n"
            + "\n".join(listed)
            + tail
        )
    try:
        return JobSpec.model_validate({"items": parsed, "params": defaults, **options})
    except ValidationError as e:
        raise InvalidJobError(_describe("job", e)) from e


_ITEM_FIELDS = tuple(JobItem.model_fields)
_PARAM_FIELDS = tuple(GenerationParams.model_fields)


def _as_item(raw: ItemInput) -> JobItem:
    """``raw`` (a prompt, an object with a prompt, or a JobItem) as a validated JobItem;
    TypeError for anything else."""
    if isinstance(raw, JobItem):
        # Revalidated: fields may have been assigned, or the item built with model_construct.
        return JobItem.model_validate({k: getattr(raw, k) for k in raw.model_fields_set})
    if isinstance(raw, str):
        return JobItem(prompt=raw)
    if not isinstance(raw, Mapping):
        raise TypeError(type(raw).__name__)
    return JobItem.model_validate(dict(raw))


# What each pydantic type error expects, in the user's words (the value is shown after it).
_EXPECTED = {
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "finite_number": "must be a finite number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "string_type": "expected a string",
    "dict_type": "expected an object",
    "list_type": "expected an array",
    "tuple_type": "expected an array",
    "model_type": "expected an object",
    "model_attributes_type": "expected an object",
}
_BOUNDS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}
MAX_PROBLEMS_PER_ITEM = 5
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _describe(
    where: str,
    error: ValidationError,
    loc_prefix: str = "",
    *,
    fields: Sequence[str] = (),
    unknown_noun: str = "field",
) -> str:
    """A ValidationError as one line, ``where: field: problem; field: problem``: each type
    error names what was expected and what was given, each unknown field the accepted ones
    (``fields``; ``unknown_noun`` says what they are) and the close match. Text from the input
    is shortened and escaped, so that the line prints whatever the input held."""

    def quoted(name: str) -> str:
        return repr(name[:SHOWN_CHARS]) + ("..." if len(name) > SHOWN_CHARS else "")

    def part(name: str | int) -> str:
        if isinstance(name, int):
            return f"[{name}]"
        return name if _NAME.fullmatch(name) else f"[{quoted(name)}]"

    def render(loc: Sequence[str | int]) -> str:
        text = "".join(p if p.startswith("[") else f".{p}" for p in map(part, loc))
        return f"{loc_prefix}{text.lstrip('.')}" if text else loc_prefix.rstrip(".")

    problems = error.errors(include_url=False)
    missing = [p["loc"][-1] for p in problems if p["type"] == "missing" and len(p["loc"]) == 1]
    messages: list[str] = []
    for problem in problems[:MAX_PROBLEMS_PER_ITEM]:
        loc: Sequence[str | int] = problem["loc"]
        kind = problem["type"]
        given = problem.get("input")
        if kind == "extra_forbidden" and loc:
            unknown = str(loc[-1])
            # No close match but a required field missing ({"text": ...}): that one, surely.
            close = difflib.get_close_matches(unknown, fields, n=1, cutoff=0.6) or [
                str(m) for m in missing[:1]
            ]
            hint = f"; did you mean {close[0]!r}?" if close else ""
            if unknown_noun == "parameter":
                of, accepted = "", f" (the parameters are {', '.join(fields)})"
            else:
                of = f" of the {where.split(' ', 1)[0] if where.startswith('line ') else 'item'}"
                accepted = f" (the fields are {', '.join(fields)})" if fields else ""
            text = f"unknown {unknown_noun}{of}{hint}"
            text += "" if close and unknown_noun == "parameter" else accepted
            messages.append(f"{render(loc)}: {text}")
            continue
        if loc and loc[-1] == "[key]":  # the key as given (loc holds it lossily decoded)
            key = given if isinstance(given, str) else str(loc[-2])
            field = f"{render(loc[:-2])} key {quoted(key)}"
        else:
            field = render(loc)
        if kind == "string_unicode":  # a field name that pydantic could not read
            field = f"{field} key {shown(given)}" if field else f"field name {shown(given)}"
            message = "contains a lone surrogate; text must be valid Unicode"
        elif kind in _EXPECTED:
            message = f"{_EXPECTED[kind]}, got {shown(given)}"
        elif kind in _BOUNDS:
            message = f"{problem['msg']}, got {shown(given)}"
        else:
            message = problem["msg"].removeprefix("Value error, ")
        messages.append(f"{field}: {message}" if field else message)
    # An object of a million unknown keys is one problem, not a million lines of them.
    more = len(problems) - len(messages)
    tail = f"; and {more} more problem(s)" if more > 0 else ""
    return f"{where}: " + "; ".join(messages) + tail
