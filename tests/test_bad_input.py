"""Every input error is one clear line, and nothing is created: hostile input files, options
and Redis URLs through the real `genq` command (and the Python client), against a real Redis."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import ROOT, RedisProcess, listening

from genq.errors import InvalidJobError
from genq.producer.client import Client
from genq.schema import GenerationParams, JobItem

Cli = Callable[..., subprocess.CompletedProcess[str]]
EXIT_FAILED, EXIT_INVALID = 1, 2
SECRET = "s3cr3t-pw"
GOOD = '{"prompt": "fine"}\n'
KB100 = "x" * 100_000


@pytest.fixture
def genq_keys(redis_server: RedisProcess) -> Iterator[Callable[[], set[str]]]:
    """The jobs (their ids) and idempotency keys in the test Redis now. Other tests share the
    server, so a test checks that nothing new appeared: an earlier test's job may lose its keys
    to their TTL meanwhile, or get a late result from a worker that is still stopping."""
    r = redis.Redis.from_url(redis_server.url, decode_responses=True)

    def keys() -> set[str]:
        jobs = {key.split(":")[2] for key in r.scan_iter("genq:job:*", count=1000)}
        return jobs | set(r.scan_iter("genq:idempotency:*", count=1000))

    yield keys
    r.close()


def assert_one_clear_line(
    result: subprocess.CompletedProcess[str], messages: tuple[str, ...], status: int
) -> str:
    """The command failed with ``status`` and said ``messages`` in one `error:` line."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    (line,) = lines
    assert line.startswith("error: "), line
    for message in messages:
        assert message in line
    assert result.returncode == status, result.stderr
    assert result.stdout == ""
    return line


def line(number: int, text: str) -> str:
    """A file whose line ``number`` is ``text``, the others good prompts."""
    return GOOD * (number - 1) + text + "\n" + GOOD


def lone(text: str) -> str:
    """``text`` with a JSON lone surrogate escape in it, as a JSON string literal."""
    return '"' + text + '\\ud800"'


# (id, file content, extra options, what the one line must say)
FILE_CASES: list[tuple[str, str | bytes, list[str], tuple[str, ...]]] = [
    # strict types
    (
        "max-new-tokens-true",
        '{"prompt": "a", "params": {"max_new_tokens": true}}',
        [],
        ("line 1: params.max_new_tokens: expected an integer, got true",),
    ),
    (
        "max-new-tokens-string",
        '{"prompt": "a", "params": {"max_new_tokens": "12"}}',
        [],
        ('params.max_new_tokens: expected an integer, got "12"',),
    ),
    (
        "max-new-tokens-float",
        '{"prompt": "a", "params": {"max_new_tokens": 12.0}}',
        [],
        ("params.max_new_tokens: expected an integer, got 12.0",),
    ),
    (
        "max-length-false",
        '{"prompt": "a", "params": {"max_length": false}}',
        [],
        ("params.max_length: expected an integer, got false",),
    ),
    (
        "temperature-string",
        '{"prompt": "a", "params": {"temperature": "0.7"}}',
        [],
        ('params.temperature: expected a number, got "0.7"',),
    ),
    (
        "temperature-true",
        '{"prompt": "a", "params": {"temperature": true}}',
        [],
        ("params.temperature: expected a number, got true",),
    ),
    (
        "top-p-null",
        '{"prompt": "a", "params": {"top_p": null}}',
        [],
        ("params.top_p: expected a number, got null",),
    ),
    (
        "top-k-float",
        '{"prompt": "a", "params": {"top_k": 2.5}}',
        [],
        ("params.top_k: expected an integer, got 2.5",),
    ),
    (
        "seed-string",
        '{"prompt": "a", "params": {"seed": "7"}}',
        [],
        ('params.seed: expected an integer, got "7"',),
    ),
    (
        "num-return-sequences-array",
        '{"prompt": "a", "params": {"num_return_sequences": [2]}}',
        [],
        ("params.num_return_sequences: expected an integer, got an array",),
    ),
    (
        "repetition-penalty-object",
        '{"prompt": "a", "params": {"repetition_penalty": {}}}',
        [],
        ("params.repetition_penalty: expected a number, got an object",),
    ),
    (
        "do-sample-string",
        '{"prompt": "a", "params": {"do_sample": "false"}}',
        [],
        ('params.do_sample: expected true or false, got "false"',),
    ),
    (
        "do-sample-number",
        '{"prompt": "a", "params": {"do_sample": 0}}',
        [],
        ("params.do_sample: expected true or false, got 0",),
    ),
    (
        "truncate-string",
        '{"prompt": "a", "params": {"truncate": "yes"}}',
        [],
        ('params.truncate: expected true or false, got "yes"',),
    ),
    (
        "seed-too-big",
        '{"prompt": "a", "params": {"seed": 18446744073709551616}}',
        [],
        ("params.seed: Input should be less than or equal to",),
    ),
    # numbers JSON does not have
    (
        "nan",
        line(7, '{"prompt": "a", "params": {"temperature": NaN}}'),
        [],
        ("line 7: invalid JSON: NaN is not a JSON value",),
    ),
    (
        "infinity",
        '{"prompt": "a", "params": {"temperature": Infinity}}',
        [],
        ("line 1: invalid JSON: Infinity is not a JSON value",),
    ),
    (
        "minus-infinity",
        '{"prompt": "a", "params": {"top_p": -Infinity}}',
        [],
        ("-Infinity is not a JSON value",),
    ),
    (
        "float-overflow",
        '{"prompt": "a", "params": {"temperature": 1e999}}',
        [],
        ("line 1: invalid JSON: the number 1e999 is too large",),
    ),
    (
        "integer-of-5000-digits",
        '{"prompt": "a", "params": {"seed": ' + "9" * 5000 + "}}",
        [],
        ("line 1: invalid JSON: a number has more than",),
    ),
    # stop strings
    (
        "stop-two-100kb-strings",
        '{"prompt": "a", "params": {"stop": ["' + KB100 + '", "' + KB100 + '"]}}',
        [],
        ("line 1: params.stop: stop string 0 is 100000 characters long", "limit is 256"),
    ),
    (
        "stop-five-strings",
        '{"prompt": "a", "params": {"stop": ["a", "b", "c", "d", "e"]}}',
        [],
        ("params.stop: 5 stop strings given; at most 4 are allowed",),
    ),
    (
        "stop-number",
        '{"prompt": "a", "params": {"stop": 5}}',
        [],
        ("params.stop: expected a string or a list of strings, got 5",),
    ),
    (
        "stop-list-of-numbers",
        '{"prompt": "a", "params": {"stop": ["ok", 1]}}',
        [],
        ("params.stop: stop string 1: expected a string, got 1",),
    ),
    (
        "stop-empty",
        '{"prompt": "a", "params": {"stop": [""]}}',
        [],
        ("params.stop: stop strings must not be empty",),
    ),
    (
        "stop-nested",
        '{"prompt": "a", "params": {"stop": [["a"]]}}',
        [],
        ("params.stop: stop string 0: expected a string, got an array",),
    ),
    # text that cannot be serialised
    (
        "prompt-lone-surrogate",
        '{"prompt": ' + lone("abc") + "}",
        [],
        (
            "line 1: prompt: contains a lone surrogate (\\ud800) at character 3; "
            "text must be valid Unicode",
        ),
    ),
    (
        "custom-id-lone-surrogate",
        '{"prompt": "a", "custom_id": ' + lone("") + "}",
        [],
        ("line 1: custom_id: contains a lone surrogate (\\ud800)",),
    ),
    (
        "stop-lone-surrogate",
        '{"prompt": "a", "params": {"stop": ["ok", ' + lone("") + "]}}",
        [],
        ("line 1: params.stop[1]: contains a lone surrogate (\\ud800)",),
    ),
    (
        "params-key-lone-surrogate",
        '{"prompt": "a", "params": {' + lone("k") + ": 1}}",
        [],
        ("line 1: params key", "contains a lone surrogate (\\ud800)"),
    ),
    (
        "field-name-lone-surrogate",
        "{" + lone("p") + ': "a"}',
        [],
        ('line 1: field name "p\\ud800": contains a lone surrogate; text must be valid',),
    ),
    # the prompt
    ("prompt-empty", '{"prompt": ""}', [], ("line 1: prompt: String should have at least 1",)),
    ("prompt-number", '{"prompt": 42}', [], ("line 1: prompt: expected a string, got 42",)),
    ("prompt-null", '{"prompt": null}', [], ("line 1: prompt: expected a string, got null",)),
    (
        "prompt-object",
        '{"prompt": {"text": "a"}}',
        [],
        ("line 1: prompt: expected a string, got an object",),
    ),
    (
        "prompt-array",
        '{"prompt": ["a", "b"]}',
        [],
        ("line 1: prompt: expected a string, got an array",),
    ),
    ("prompt-missing", '{"custom_id": "a"}', [], ("line 1: prompt: Field required",)),
    # lines that are not objects
    ("array-line", '["a", "b"]', [], ('line 1: expected a JSON object like {"prompt": "..."}',)),
    ("string-line", '"a prompt"', ["--format", "jsonl"], ('got "a prompt"',)),
    ("number-line", "42", ["--format", "jsonl"], ("line 1: expected a JSON object", "got 42")),
    ("null-line", "null", ["--format", "jsonl"], ("got null",)),
    ("truncated-line", line(3, '{"prompt": "a"'), [], ("line 3: invalid JSON",)),
    # bounded JSON
    (
        "nested-100000-levels",
        "[" * 100_000,
        [],
        ("line 1: the JSON value is nested more than 16 levels deep; the limit is 16",),
    ),
    (
        "nested-20-levels",
        '{"prompt": "a", "params": {"stop": ' + "[" * 18 + "]" * 18 + "}}",
        [],
        ("line 1: the JSON value is nested 20 levels deep; the limit is 16",),
    ),
    (
        "duplicate-key",
        '{"prompt": "a", "prompt": "b"}',
        [],
        ('line 1: key "prompt" appears twice in one object',),
    ),
    # field names
    (
        "parameters-for-params",
        '{"prompt": "a", "parameters": {"top_k": 1}}',
        [],
        (
            "line 1: parameters: unknown field of the line; did you mean 'params'?",
            "the fields are prompt, custom_id, messages, params",
        ),
    ),
    (
        "text-for-prompt",
        '{"text": "a"}',
        [],
        (
            "line 1: prompt: Field required",
            "text: unknown field of the line; did you mean 'prompt'?",
            "prompt, custom_id, messages, params",
        ),
    ),
    (
        "temprature",
        '{"prompt": "a", "params": {"temprature": 0.5}}',
        [],
        ("line 1: params.temprature: unknown parameter; did you mean 'temperature'?",),
    ),
    (
        "unknown-parameter",
        '{"prompt": "a", "params": {"beam_width": 4}}',
        [],
        ("params.beam_width: unknown parameter (the parameters are max_new_tokens,",),
    ),
    (
        "ansi-escape-field",
        '{"prompt": "a", "\\u001b[31mred": 1}',
        [],
        ("['\\x1b[31mred']: unknown field of the line",),
    ),
    (
        "line-separator-in-field-name",
        '{"prompt": "a", "x\\u2028y": 1}',
        [],
        ("['x\\u2028y']: unknown field of the line",),
    ),
    (
        "line-separator-in-value",
        '{"prompt": "a", "params": {"seed": "1\\u20282\\u0085"}}',
        [],
        ('params.seed: expected an integer, got "1\\u20282\\u0085"',),
    ),
    (
        "a-million-unknown-fields",
        "{" + ", ".join(f'"k{i}": 0' for i in range(100_000)) + ', "prompt": "a"}',
        [],
        ("line 1: k0: unknown field", "and 99995 more problem(s)"),
    ),
    ("params-array", '{"prompt": "a", "params": [1]}', [], ("params: expected an object",)),
    # ids
    (
        "custom-id-huge",
        '{"prompt": "a", "custom_id": "' + "c" * 10_000 + '"}',
        [],
        ("line 1: custom_id: String should have at most 256 characters",),
    ),
    (
        "custom-id-number",
        '{"prompt": "a", "custom_id": 7}',
        [],
        ("line 1: custom_id: expected a string, got 7",),
    ),
    ("custom-id-empty", '{"prompt": "a", "custom_id": ""}', [], ("custom_id: String should",)),
    # the file
    ("not-utf8", b'{"prompt": "caf\xe9"}\n', [], ("is not UTF-8 text",)),
    ("only-blank-lines", "\n \n\t\n", [], ("contains no prompts",)),
    # options
    ("metadata-not-key-value", GOOD, ["-m", "novalue"], ("'novalue'", "KEY=VALUE")),
    (
        "metadata-key-too-long",
        GOOD,
        ["-m", "k" * 65 + "=v"],
        ("job: metadata key", "String should have at most 64 characters"),
    ),
    (
        "metadata-value-too-long",
        GOOD,
        ["-m", "k=" + "v" * 600],
        ("job: metadata.k: String should have at most 512 characters",),
    ),
    (
        "metadata-undecodable-byte",
        GOOD,
        ["-m", "k=\udcff"],  # a command-line byte that is not UTF-8 arrives as \udcff
        ("job: metadata.k: contains a lone surrogate (\\udcff)",),
    ),
    (
        "stop-option-undecodable-byte",
        GOOD,
        ["--stop", "\udcff"],
        ("job params: stop[0]: contains a lone surrogate (\\udcff)",),
    ),
    (
        "stop-option-five-times",
        GOOD,
        [arg for s in "abcde" for arg in ("--stop", s)],
        ("job params: stop: 5 stop strings given; at most 4",),
    ),
    (
        "idempotency-key-undecodable-byte",
        GOOD,
        ["--idempotency-key", "key-\udcff"],
        ("idempotency_key: contains a lone surrogate (\\udcff)",),
    ),
    (
        "idempotency-key-too-long",
        GOOD,
        ["--idempotency-key", "k" * 300],
        ("idempotency_key: String should have at most 256 characters",),
    ),
    (
        "temperature-nan-option",
        GOOD,
        ["--temperature", "nan"],
        ("job params: temperature: must be a finite number, got NaN",),
    ),
    (
        "top-p-inf-option",
        GOOD,
        ["--top-p", "inf"],
        ("job params: top_p: must be a finite number, got Infinity",),
    ),
    ("expires-in-nan", GOOD, ["--expires-in", "nan"], ("'--expires-in': 'nan'",)),
    ("expires-in-inf", GOOD, ["--expires-in", "inf"], ("'--expires-in': 'inf'",)),
    ("max-new-tokens-zero", GOOD, ["--max-new-tokens", "0"], ("max_new_tokens",)),
]


@pytest.mark.parametrize(
    ("content", "args", "messages"),
    [pytest.param(content, args, messages, id=id_) for id_, content, args, messages in FILE_CASES],
)
def test_bad_input_is_one_clear_line_and_creates_nothing(
    genq_cli: Cli,
    genq_keys: Callable[[], set[str]],
    tmp_path: Path,
    content: str | bytes,
    args: list[str],
    messages: tuple[str, ...],
) -> None:
    source = tmp_path / "input.jsonl"
    if isinstance(content, bytes):
        source.write_bytes(content)
    else:
        source.write_text(content if content.endswith("\n") else content + "\n", "utf-8")
    before = genq_keys()
    result = genq_cli("submit", str(source), "--idempotency-key", "k", *args)
    assert_one_clear_line(result, messages, EXIT_INVALID)
    assert genq_keys() - before == set()


@pytest.mark.parametrize(
    "content",
    [
        '{"prompt": "a", "[/bold]": 1}',
        '{"prompt": "a", "custom_id": "[/x]"}\n{"prompt": "b", "custom_id": "[/x]"}',
    ],
    ids=["markup-field-name", "markup-custom-id"],
)
def test_input_that_looks_like_console_markup_is_shown_as_it_is(
    genq_cli: Cli, genq_keys: Callable[[], set[str]], tmp_path: Path, content: str
) -> None:
    source = tmp_path / "input.jsonl"
    source.write_text(content + "\n")
    before = genq_keys()
    result = genq_cli("submit", str(source))
    # Shown as written, not read as console markup (which would raise, or eat the text).
    assert_one_clear_line(result, ("[/bold]" if "bold" in content else "'[/x]'",), EXIT_INVALID)
    assert genq_keys() - before == set()


def test_a_nul_character_is_valid_text_and_is_accepted(
    genq_cli: Cli, tmp_path: Path, client: Client
) -> None:
    # NUL is valid JSON (\u0000) and valid Unicode, and serialises; only the model decides
    # what it means, as for any other character.
    source = tmp_path / "input.jsonl"
    source.write_text('{"prompt": "a\\u0000b", "custom_id": "nul\\u0000"}\n')
    result = genq_cli("submit", str(source), env={"GENQ_QUEUE": "nobody-reads-nul"})
    assert result.returncode == 0, result.stderr
    assert client.status(result.stdout.strip()).total == 1


# --- the Python client: the same checks, before any key is written ------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.submit(["a"], metadata={"k": 1}), "job: metadata.k: expected a string, got 1"),
        (lambda c: c.submit(["a"], metadata={"k": None}), "expected a string, got null"),
        (lambda c: c.submit(["a"], metadata=["k"]), "job metadata: expected an object"),
        (
            lambda c: c.submit(["a"], idempotency_key="\ud800"),
            "idempotency_key: contains a lone surrogate (\\ud800)",
        ),
        (lambda c: c.submit(["a"], expires_in_s=float("nan")), "finite number"),
        (lambda c: c.submit("a prompt"), "items must be a list of prompts"),
        (lambda c: c.submit(["a"], [1, 2]), "job params: expected an object, got an array"),
        (
            lambda c: c.submit(["a"], {"temperature": float("nan")}),
            "job params: temperature: must be a finite number, got NaN",
        ),
        (
            lambda c: c.submit(["a"], {"temprature": 0.5}),
            "job params: temprature: unknown parameter; did you mean 'temperature'?",
        ),
        (
            lambda c: c.submit(["a"], GenerationParams.model_construct(top_k=True)),
            "job params: top_k: expected an integer, got true",
        ),
        (
            lambda c: c.submit([JobItem.model_construct(prompt=b"bytes")]),
            "item 0: prompt: expected a string, got a bytes",
        ),
        (lambda c: c.submit([42]), "item 0: expected a prompt string or an object"),
        (lambda c: c.submit(["\ud800"]), "item 0: prompt: contains a lone surrogate"),
        (
            lambda c: c.submit([{"prompt": "a", "params": {"stop": {"a"}}}]),
            "item 0: params.stop: expected a string or a list of strings, got a set",
        ),
        (
            lambda c: c.submit([{"prompt": "a", "params": {"seed": True}}]),
            "item 0: params.seed: expected an integer, got true",
        ),
    ],
    ids=[
        "metadata-number",
        "metadata-none",
        "metadata-list",
        "idempotency-key-surrogate",
        "expires-nan",
        "items-a-string",
        "params-a-list",
        "params-nan",
        "params-typo",
        "constructed-params",
        "constructed-item",
        "item-a-number",
        "prompt-surrogate",
        "stop-a-set",
        "seed-true",
    ],
)
def test_the_client_refuses_bad_input_before_writing_anything(
    client: Client, genq_keys: Callable[[], set[str]], call: Callable[[Client], Any], message: str
) -> None:
    before = genq_keys()
    with pytest.raises(InvalidJobError) as e:
        call(client)
    assert message in str(e.value)
    assert "\n" not in str(e.value)
    assert genq_keys() - before == set()


# --- Redis URLs --------------------------------------------------------------------------------


def not_redis_url(request: pytest.FixtureRequest, where: str) -> str:
    """The URL for ``where``: a port of the machine's PostgreSQL or RabbitMQ (skipped when
    nothing listens there) or of a throwaway HTTP server."""
    port = request.getfixturevalue("http_server") if where == "http" else int(where)
    if not listening(port):
        pytest.skip(f"nothing listens on port {port} here")
    return f"redis://genq:{SECRET}@127.0.0.1:{port}/0"


def submit_to(genq_cli: Cli, tmp_path: Path, url: str) -> subprocess.CompletedProcess[str]:
    """`genq submit` of a one-prompt file against ``url``."""
    source = tmp_path / "p.txt"
    source.write_text("hello\n")
    return genq_cli("submit", str(source), env={"GENQ_REDIS_URL": url}, timeout=60)


@pytest.mark.parametrize("where", ["http", "5432", "5672"], ids=["http", "postgres", "rabbitmq"])
def test_submit_to_a_server_that_is_not_redis_says_so(
    genq_cli: Cli, tmp_path: Path, request: pytest.FixtureRequest, where: str
) -> None:
    url = not_redis_url(request, where)
    port = url.rsplit(":", 1)[1].split("/")[0]
    result = submit_to(genq_cli, tmp_path, url)
    text = assert_one_clear_line(
        result,
        (f"the server at 127.0.0.1:{port}", "it is not a Redis server", "Check the host and port"),
        EXIT_FAILED,
    )
    assert "is it running" not in text
    assert SECRET not in result.stdout + result.stderr


def test_submit_to_a_database_the_server_lacks_says_how_many_it_has(
    genq_cli: Cli, tmp_path: Path, redis_server: RedisProcess, genq_keys: Callable[[], set[str]]
) -> None:
    url = f"redis://:{SECRET}@127.0.0.1:{redis_server.port}/99"
    before = genq_keys()
    result = submit_to(genq_cli, tmp_path, url)
    assert_one_clear_line(
        result, ("has no database 99: it has 16 (0 to 15)", "Change the /99"), EXIT_FAILED
    )
    assert SECRET not in result.stderr
    assert genq_keys() - before == set()


@pytest.mark.parametrize(
    ("password", "encoding"),
    [("pa#ss", "# as %23"), ("pa/ss", "/ as %2F"), ("pa?ss", "? as %3F"), ("p@ss", "@ as %40")],
)
def test_submit_with_a_password_that_needs_percent_encoding_says_how(
    genq_cli: Cli,
    tmp_path: Path,
    redis_server: RedisProcess,
    genq_keys: Callable[[], set[str]],
    password: str,
    encoding: str,
) -> None:
    url = f"redis://genq:{SECRET}{password}@127.0.0.1:{redis_server.port}/0"
    before = genq_keys()
    result = submit_to(genq_cli, tmp_path, url)
    assert_one_clear_line(result, ("must be percent-encoded", encoding), EXIT_INVALID)
    assert SECRET not in result.stderr
    assert genq_keys() - before == set()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:6379/0", "invalid Redis URL"),
        ("redis://127.0.0.1:6379/zero", "not a database number"),
        ("redis://127.0.0.1:6379/0?nonsense=1", "option redis does not know: 'nonsense'"),
    ],
    ids=["scheme", "database-name", "unknown-option"],
)
def test_submit_with_a_malformed_url_is_one_line(
    genq_cli: Cli, tmp_path: Path, url: str, message: str
) -> None:
    assert_one_clear_line(submit_to(genq_cli, tmp_path, url), (message,), EXIT_INVALID)


def run_worker(url: str) -> tuple[int, str, float]:
    """Run `genq worker` (null engine: no model) against ``url``; its status, output, seconds."""
    env = {
        **os.environ,
        "GENQ_REDIS_URL": url,
        "GENQ_ENGINE": "null",
        "GENQ_DEVICE": "cpu",
        "PYTHONUNBUFFERED": "1",
    }
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "genq", "worker"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


@pytest.mark.parametrize("where", ["wrong-db", "http", "5432"])
def test_a_worker_pointed_at_the_wrong_place_exits_at_once_saying_why(
    where: str, redis_server: RedisProcess, request: pytest.FixtureRequest
) -> None:
    if where == "wrong-db":
        url = f"redis://:{SECRET}@127.0.0.1:{redis_server.port}/99"
        reason = "has no database 99"
    else:
        url = not_redis_url(request, where)
        reason = "it is not a Redis server"
    status, output, seconds = run_worker(url)
    assert status != 0, output
    assert seconds < 30, output  # a worker that retried forever would look alive, taking nothing
    errors = [text for text in output.splitlines() if text.startswith("error: ")]
    assert len(errors) == 1, output
    assert reason in errors[0]
    assert "Traceback" not in output
    assert "ready: engine=" not in output
    assert SECRET not in output
