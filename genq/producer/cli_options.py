"""The ``genq`` command line's shared parts: exit statuses, option types and option sets, and
the client a command uses."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any, TypeVar

import click

from genq.producer.client import Client
from genq.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK = 0
EXIT_FAILED = 1  # a command failed, or the job ended without completing
EXIT_INVALID = 2  # invalid input or usage: nothing was enqueued
EXIT_NO_SUCH_JOB = 3  # the job id names no job (or is not a job id at all)
EXIT_BUSY = 75  # refused for now (a tenant quota): nothing was enqueued, try again later
EXIT_TIMEOUT = 124  # `--timeout` ran out while waiting; the job keeps running

_DURATION_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class Duration(click.ParamType[float]):
    """Seconds, or a number with a unit: 90, 90s, 30m, 2h, 1d."""

    name = "duration"

    def convert(self, value: Any, param: Any, ctx: click.Context | None) -> float:
        if isinstance(value, int | float):
            return float(value)
        text = str(value).strip().lower()
        unit = text[-1:] if text[-1:] in _DURATION_UNITS_S else "s"
        number = text[:-1] if text[-1:] in _DURATION_UNITS_S else text
        try:
            seconds = float(number) * _DURATION_UNITS_S[unit]
        except ValueError:
            self.fail(f"{value!r} is not a duration (examples: 90, 90s, 30m, 2h, 1d)", param, ctx)
        if not math.isfinite(seconds) or seconds <= 0:
            self.fail(f"{value!r}: a duration must be positive", param, ctx)
        return seconds


class OutputFile(click.ParamType[str]):
    """A file to write results to ('-': stdout), checked before anything is submitted: the
    results of a job are not the moment to find that its output cannot be written."""

    name = "file"

    def convert(self, value: Any, param: Any, ctx: click.Context | None) -> str:
        path = str(value)
        if path == "-" or (ctx is not None and ctx.resilient_parsing):  # shell completion
            return path
        try:
            # Made here only if nothing is there (a link is not followed): then removed.
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            if os.path.isdir(path):
                self.fail(f"{path!r} is a directory; nothing was submitted", param, ctx)
            if os.path.isfile(path) and not os.access(path, os.W_OK):
                denied = f"cannot write {path!r} (permission denied); nothing was submitted"
                self.fail(denied, param, ctx)
            return path  # a file, or a FIFO, a device, a link: the real open decides
        except OSError as e:
            self.fail(f"cannot write {path!r} ({e.strerror}); nothing was submitted", param, ctx)
        os.close(fd)
        os.remove(path)
        return path


class KeyValue(click.ParamType[tuple[str, str]]):
    """``KEY=VALUE`` (the value may hold ``=``; the key may not be empty)."""

    name = "key=value"

    def convert(self, value: Any, param: Any, ctx: click.Context | None) -> tuple[str, str]:
        if isinstance(value, tuple):
            return value  # type: ignore[return-value]
        key, sep, rest = str(value).partition("=")
        if not sep or not key:
            self.fail(f"{value!r}: expected KEY=VALUE", param, ctx)
        return key, rest


GENERATION_OPTIONS: list[Callable[[F], F]] = [
    click.option("--max-new-tokens", type=int, help="New tokens per output [default: 64]."),
    click.option(
        "--max-length",
        type=int,
        help="Total length, prompt + new tokens (the seed tutorial's); instead of "
        "--max-new-tokens.",
    ),
    click.option("--temperature", type=float, help="Sampling temperature [default: 1.0]."),
    click.option(
        "--top-k", type=int, help="Sample from the k most likely tokens (0: off) [default: 50]."
    ),
    click.option("--top-p", type=float, help="Nucleus sampling threshold [default: 0.95]."),
    click.option("--num-return-sequences", "-n", type=int, help="Outputs per prompt [default: 1]."),
    click.option(
        "--repetition-penalty", type=float, help="Penalty for repeated tokens [default: 1.0]."
    ),
    click.option(
        "--stop", multiple=True, help="Stop string (repeatable); not included in the output."
    ),
    click.option(
        "--greedy",
        is_flag=True,
        default=None,
        help="Greedy decoding instead of sampling (temperature, top-k and top-p unused).",
    ),
    click.option("--seed", type=int, help="Random seed for sampling."),
    click.option(
        "--truncate",
        is_flag=True,
        default=None,
        help="Drop the start of a prompt too long for the model instead of failing the item.",
    ),
    click.option(
        "--metadata",
        "-m",
        type=KeyValue(),
        multiple=True,
        metavar="KEY=VALUE",
        help="Job metadata, kept in the job's record (repeatable).",
    ),
    click.option(
        "--format",
        "input_format",
        type=click.Choice(["auto", "jsonl", "txt"]),
        default="auto",
        show_default=True,
        help="Input format (auto: by file suffix or content).",
    ),
]

WORKER_OPTIONS: list[Callable[[F], F]] = [
    click.option(
        "--max-batch-size", type=int, help="Sequences per forward pass [GENQ_MAX_BATCH_SIZE]."
    ),
    click.option(
        "--max-wait-ms",
        type=int,
        help="Longest a prompt waits for batch neighbours [GENQ_MAX_WAIT_MS].",
    ),
    click.option(
        "--max-batch-tokens",
        type=int,
        help="Padded tokens (rows x (prompt + new)) per batch [GENQ_MAX_BATCH_TOKENS].",
    ),
    click.option("--model", help="Model directory or Hugging Face id [GENQ_MODEL]."),
    click.option("--device", help="auto | cpu | cuda | cuda:N [GENQ_DEVICE]."),
    click.option(
        "--engine",
        type=click.Choice(["hf", "ct2", "null"]),
        help="Generation engine [GENQ_ENGINE].",
    ),
    click.option(
        "--batching",
        type=click.Choice(["continuous", "static"]),
        help="Continuous (rows join and leave a running batch) or static [GENQ_BATCHING].",
    ),
]

SCHEDULING_OPTIONS: list[Callable[[F], F]] = [
    click.option(
        "--priority",
        type=click.Choice(["high", "normal", "low"]),
        help="Served before lower priorities on every worker [GENQ_DEFAULT_PRIORITY: normal].",
    ),
    click.option(
        "--tenant",
        help="Whose share of the workers and quotas the job counts against [default].",
    ),
]

SUBMIT_OPTIONS: list[Callable[[F], F]] = [
    click.option(
        "--wait",
        "wait_",
        is_flag=True,
        help="Wait for the job, with a progress bar on stderr; exit status as `genq wait`.",
    ),
    click.option(
        "--timeout",
        type=Duration(),
        help="With --wait or -o: stop waiting after this long (90, 30m, 2h; exit 124); "
        "the job keeps running.",
    ),
    click.option(
        "-o",
        "--output",
        type=OutputFile(),
        help="Wait for the job and write its results (JSON Lines) here as they come ('-': stdout).",
    ),
    click.option(
        "--json",
        "as_json",
        is_flag=True,
        help="Print the job as submitted (one JSON object, with its id) instead of the id alone.",
    ),
    click.option(
        "--idempotency-key",
        help="Repeating the command with the same key prints the first job's id and enqueues "
        "nothing.",
    ),
]


def apply(options: list[Callable[[F], F]]) -> Callable[[F], F]:
    def decorate(f: F) -> F:
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


def limit_option(help_text: str) -> Callable[[F], F]:
    """``--limit N`` (1 to 1000, default 20) of a listing command."""
    return click.option(
        "--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help=help_text
    )


def client_from(ctx: click.Context) -> Client:
    """The client for a command, on the settings the ``genq`` group read."""
    return Client(settings=ctx.find_object(Settings))
