"""Configuration: every default is a named constant here, overridable by ``GENQ_*`` variables."""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# --- Connections -------------------------------------------------------------------------------
DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_QUEUE = "generate"  # Celery queue name; kombu stores it under the genq: prefix
# Keys beside the queues under genq:celery: (kombu's bookkeeping, the dead-letter list).
RESERVED_QUEUE_NAMES = frozenset({"dead", "unacked", "unacked_index", "unacked_mutex"})

# --- Model -------------------------------------------------------------------------------------
DEFAULT_MODEL = "gpt2"  # Hugging Face model id or a local directory
DEFAULT_DEVICE = "auto"  # auto (CUDA when present) | cpu | cuda | cuda:N
DEFAULT_ENGINE = "hf"  # hf (torch + transformers) | ct2 (CTranslate2) | null (no model)
DEFAULT_CT2_COMPUTE_TYPE = "auto"  # auto: int8 on CPU, int8_float16 on CUDA; or float32, ...
DEFAULT_CACHE_DIR = "~/.cache/genq"  # converted models (ct2) live here

# --- Batching policy ---------------------------------------------------------------------------
DEFAULT_BATCHING = "continuous"  # continuous (rows join/leave a running batch) | static
DEFAULT_MAX_BATCH_SIZE = 32  # sequences (prompts x num_return_sequences) per forward pass
# Padded (prompt + new) tokens a batch may hold: bounds the KV cache (GPT-2 124M in fp32 keeps
# 74 KB per token, so 8,192 tokens is ~0.6 GB: a CPU worker stays near 2 GB on long prompts).
DEFAULT_MAX_BATCH_TOKENS_CPU = 8_192
DEFAULT_MAX_BATCH_TOKENS_CUDA = 262_144
DEFAULT_MAX_WAIT_MS = 50  # longest a lone prompt waits for batch neighbours
# Prompts per Celery message when GENQ_CHUNK_SIZE is unset: a job is cut into about
# CHUNK_TARGET_MESSAGES messages of MIN..MAX_AUTO_CHUNK_SIZE prompts each. A small job spreads
# over many workers at once; a large one pays the per-message cost (5 Redis round trips and
# ~0.6 ms of a worker's CPU) once per 32 prompts rather than once per 16. No more than one
# default batch: a worker holding a larger message makes urgent work wait a batch longer.
MIN_AUTO_CHUNK_SIZE = 16
MAX_AUTO_CHUNK_SIZE = 32
CHUNK_TARGET_MESSAGES = 256

# --- Scheduling (docs/scheduling.md) ------------------------------------------------------------
DEFAULT_SCHEDULING = "fair"  # fair (pending lists per job, fair refill) | fifo (one queue)
DEFAULT_PRIORITY = "normal"  # high | normal | low, for jobs submitted without one
# Messages the fair refill keeps ready in the Celery queue, or this many x MIN_AUTO_CHUNK_SIZE
# prompts in fewer, larger ones (one at least): enough that no worker waits for a refill, few
# enough that urgent work is never far from the head.
DEFAULT_FEED_DEPTH = 4
FEED_BATCH_MESSAGES = 64  # a producer stages a job's messages this many at a time
# A waiting priority level passed over this many messages in a row gets the next one: low work
# under sustained normal load gets at least 1 message in (this + 1).
DEFAULT_STARVE_AFTER_MESSAGES = 9
# In a worker's pool, an item moves up one priority level for each this many seconds it waited.
DEFAULT_PRIORITY_AGING_S = 2.0
DEFAULT_TENANT = "default"  # the tenant of jobs submitted without one (CLI, client)
DEFAULT_TENANT_WEIGHT = 1.0
MIN_TENANT_WEIGHT, MAX_TENANT_WEIGHT = 0.001, 1000.0  # shares of 1 to 1,000,000 at most
QUOTA_RETRY_AFTER_S = 30  # what a refusal over quota asks the client to wait

# --- Operations (docs/scaling.md) ----------------------------------------------------------------
DEFAULT_LOG_FORMAT = "text"  # text | json (one object per line, for log shippers)

# --- Generation defaults (the seed tutorial's sampling settings) -------------------------------
DEFAULT_MAX_NEW_TOKENS = 64
DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_K = 50
DEFAULT_TOP_P = 0.95

# --- Limits (validated at submission; each error says which limit and how to change it) -------
MAX_NEW_TOKENS_LIMIT = 4_096
MAX_RETURN_SEQUENCES = 16
MAX_STOP_STRINGS = 4  # OpenAI's limit
MAX_STOP_CHARS = 256  # each stop string's length
MAX_JSON_DEPTH = 16  # nesting of one input line's JSON value ({"params": {"stop": [...]}} is 3)
MAX_METADATA_ITEMS = 64
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512
MAX_IDEMPOTENCY_KEY_CHARS = 256
MAX_CUSTOM_ID_CHARS = 256
DEFAULT_MAX_ITEMS_PER_JOB = 100_000
DEFAULT_MAX_PROMPT_BYTES = 64 * 1024
DEFAULT_MAX_INPUT_FILE_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_JOB_BYTES = 256 * 1024 * 1024  # prompt bytes per job, whatever its source
MAX_EXPIRES_IN_S = 30 * 24 * 3600  # a job's deadline is at most this far away
MAX_PROMPT_BYTES_LIMIT = 1024 * 1024  # GENQ_MAX_PROMPT_BYTES may be raised up to this
# A queue message bigger than this is refused by a worker unread (dead-lettered). Producers cut
# messages at CHUNK_MAX_BYTES of item JSON; the envelope escapes that JSON again (at most 3x,
# for non-ASCII text) and base64-encodes it (4/3), so even one item of the largest allowed
# prompt stays well below the limit.
MAX_MESSAGE_BYTES = 32 * 1024 * 1024
CHUNK_MAX_BYTES = 1024 * 1024
MAX_CHUNK_ITEMS = 4_096  # items one message may carry (GENQ_CHUNK_SIZE's upper bound)

# --- Dead letters: messages no worker could use --------------------------------------------------
DEAD_LETTER_LIMIT = 1_000  # the newest this many are kept
DEAD_LETTER_MESSAGE_CHARS = 8_192  # of each refused message, this much is kept

# --- Lifetimes ---------------------------------------------------------------------------------
DEFAULT_RESULT_TTL_S = 7 * 24 * 3600  # job record and results expire this long after the job ends
DEFAULT_UNFINISHED_TTL_S = 30 * 24 * 3600  # a job that never ends (lost, abandoned) expires too
DEFAULT_HEARTBEAT_S = 5.0  # worker heartbeat period; each beat also renews the worker's leases
# A message a worker holds is leased to it: the heartbeat renews the lease, and a lease older
# than this is requeued by any live worker (the worker died without a word). Recovery takes at
# most LEASE + one heartbeat + one sweep: ~40 s by default.
DEFAULT_LEASE_S = 30
LEASE_SWEEP_S = 5  # how often every worker looks for expired leases
LEASE_HEARTBEATS = 3  # a lease must outlast this many heartbeat periods
# A consumer with room that takes no message for this long while messages wait in its queue is
# stuck (a kombu Redis transport can miss a lost connection) and reconnects.
CONSUMER_STALL_S = 15.0
WORKER_TTL_FACTOR = 3  # a worker whose heartbeat is this many periods old counts as gone
# A worker's record (and counters) outlives its last heartbeat this long, so that a Redis
# outage does not erase a live worker's counters; liveness is judged by the heartbeat's time.
WORKER_RECORD_TTL_S = 3600
# A Redis command without a reply for this long fails (a server that accepts and never answers
# would hang a command forever); above DURABLE_SUBMIT_TIMEOUT_S, the longest wait genq asks for.
REDIS_SOCKET_TIMEOUT_S = 30.0
DEFAULT_POLL_INTERVAL_S = 0.5  # how often `wait` polls job status
WAIT_OUTAGE_TOLERANCE_S = 120.0  # `wait` keeps polling through a Redis outage this long
DURABLE_SUBMIT_TIMEOUT_S = 10.0  # a submit waits this long for Redis to fsync the job (WAITAOF)
# Whether a server has replicas (a submit then waits for one, a worker's ack for its results
# on one) is asked at most this often.
REPLICA_CHECK_S = 5.0
# `wait` asks whether a live worker consumes the queue at most this often (it reads every
# worker's record), not on every poll.
WORKER_CHECK_INTERVAL_S = 5.0
# `genq jobs` with filters reads the recent-jobs index newest first, this many ids at a time,
# and gives up after this many: a filter that matches nothing must not read every job record.
LIST_JOBS_PAGE = 500
LIST_JOBS_SCAN_LIMIT = 100_000
# A job not found on a server without an append-only file that started less than this long ago
# may have been lost with the restart: the not-found message says so.
RECENT_RESTART_S = 24 * 3600

# --- HTTP API (`genq api`) ------------------------------------------------------------------------
DEFAULT_API_HOST = "127.0.0.1"
DEFAULT_API_PORT = 8000
DEFAULT_FILE_TTL_S = 30 * 24 * 3600  # an uploaded file without expires_after lives this long
MIN_FILE_TTL_S, MAX_FILE_TTL_S = 3600, 30 * 24 * 3600  # OpenAI's bounds on expires_after
FILE_CHUNK_BYTES = 1024 * 1024  # files are kept in Redis as chunks of about this size
MAX_FILE_ERRORS_KEPT = 100  # invalid lines of a file: the first this many are reported
MAX_BATCH_METADATA_ITEMS = 16  # OpenAI's limits on a batch's metadata
MAX_BATCH_METADATA_KEY_CHARS = 64
MAX_BATCH_METADATA_VALUE_CHARS = 512
MAX_JSON_BODY_BYTES = 16 * 1024 * 1024  # a JSON request body (the native API's inline jobs)
LIST_PAGE_DEFAULT = 20  # OpenAI's list endpoints: default and largest page
LIST_PAGE_MAX = 100
# A cancelled batch shows `cancelling` this long, while rows already generating finish and
# their results are kept; then `cancelled`, with the partial output file.
DEFAULT_CANCEL_SETTLE_S = 10.0
DEFAULT_COMPLETION_TIMEOUT_S = 600.0  # POST /v1/completions waits this long for its result
FINALIZE_LOCK_S = 300  # one process writes a batch's output files; others wait this long at most
IDEMPOTENCY_TTL_S = 24 * 3600  # an HTTP Idempotency-Key is remembered this long (Stripe's rule)
RETRY_AFTER_S = 5  # what a 503 (Redis away, no worker) asks a client to wait
# Webhooks: delivered at least once, retried with backoff for up to a day after the event.
WEBHOOK_TIMEOUT_S = 10.0
WEBHOOK_RETRY_FOR_S = 24 * 3600
WEBHOOK_BACKOFF_S = (5, 30, 120, 300, 1800, 3600, 7200)  # then every 2 hours until a day has passed
DEADLINE_SWEEP_S = 1.0  # how often `genq api` ends jobs whose deadline passed
POLICY_REFRESH_S = 30.0  # how often `genq api` writes its tenants file's policies to Redis
WEBHOOK_POLL_S = 1.0  # how often a sender looks for events that are due
WEBHOOK_CLAIM_S = 60  # an event a sender took is not taken by another sender for this long
WEBHOOK_TOLERANCE_S = 300  # receivers reject a timestamp further off than this (Standard Webhooks)

# --- Failures ----------------------------------------------------------------------------------
DEFAULT_MAX_ATTEMPTS = 3  # an item whose generation raises is tried this many times in all...
DEFAULT_RETRY_BACKOFF_S = 1.0  # ...waiting this long before the 2nd try, twice that before the 3rd
OOM_RECOVERY_BATCHES = 200  # batches without running out of memory before the budget grows back


class Settings(BaseSettings):
    """Runtime settings, read from ``GENQ_*`` environment variables (e.g. ``GENQ_REDIS_URL``)."""

    model_config = SettingsConfigDict(env_prefix="GENQ_", extra="ignore")

    redis_url: str = DEFAULT_REDIS_URL
    queue: str = Field(DEFAULT_QUEUE, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    model: str = DEFAULT_MODEL
    device: str = Field(DEFAULT_DEVICE, pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    engine: str = Field(DEFAULT_ENGINE, pattern=r"^(hf|ct2|null)$")
    ct2_compute_type: str = Field(
        DEFAULT_CT2_COMPUTE_TYPE,
        pattern=r"^(auto|default|int8|int8_float32|int8_float16|int8_bfloat16|int16|float16|bfloat16|float32)$",
    )
    cache_dir: str = DEFAULT_CACHE_DIR
    batching: str = Field(DEFAULT_BATCHING, pattern=r"^(continuous|static)$")
    max_batch_size: int = Field(DEFAULT_MAX_BATCH_SIZE, ge=1, le=4096)
    max_batch_tokens: int | None = Field(None, ge=16)  # None: by device, see below
    max_wait_ms: int = Field(DEFAULT_MAX_WAIT_MS, ge=1, le=60_000)
    chunk_size: int | None = Field(None, ge=1, le=MAX_CHUNK_ITEMS)  # None: by job size
    max_items_per_job: int = Field(DEFAULT_MAX_ITEMS_PER_JOB, ge=1)
    max_prompt_bytes: int = Field(DEFAULT_MAX_PROMPT_BYTES, ge=1, le=MAX_PROMPT_BYTES_LIMIT)
    max_input_file_bytes: int = Field(DEFAULT_MAX_INPUT_FILE_BYTES, ge=1)
    max_job_bytes: int = Field(DEFAULT_MAX_JOB_BYTES, ge=1)
    result_ttl_s: int = Field(DEFAULT_RESULT_TTL_S, ge=1)
    unfinished_ttl_s: int = Field(DEFAULT_UNFINISHED_TTL_S, ge=60)
    heartbeat_s: float = Field(DEFAULT_HEARTBEAT_S, gt=0)
    lease_s: int = Field(DEFAULT_LEASE_S, ge=3)
    max_attempts: int = Field(DEFAULT_MAX_ATTEMPTS, ge=1, le=100)
    retry_backoff_s: float = Field(DEFAULT_RETRY_BACKOFF_S, ge=0, le=3600)
    # Workers: a Jinja chat template for /v1/chat/completions lines when the model has none.
    chat_template: str | None = None
    # `genq api`: API keys (comma-separated, each key its own tenant) or a TOML tenants file.
    api_keys: str | None = Field(None, repr=False)
    api_tenants_file: str | None = None
    # Webhook targets on private, loopback or link-local addresses are refused unless this is
    # set (server-side request forgery): only for a receiver inside a trusted network.
    webhook_allow_private: bool = False
    cancel_settle_s: float = Field(DEFAULT_CANCEL_SETTLE_S, ge=0, le=3600)
    completion_timeout_s: float = Field(DEFAULT_COMPLETION_TIMEOUT_S, gt=0, le=24 * 3600)
    file_ttl_s: int = Field(DEFAULT_FILE_TTL_S, ge=60)
    # The model name /v1/models lists and batch lines must ask for (default: GENQ_MODEL).
    served_model_name: str | None = None
    scheduling: str = Field(DEFAULT_SCHEDULING, pattern=r"^(fair|fifo)$")
    default_priority: str = Field(DEFAULT_PRIORITY, pattern=r"^(high|normal|low)$")
    feed_depth: int = Field(DEFAULT_FEED_DEPTH, ge=1, le=10_000)
    starve_after_messages: int = Field(DEFAULT_STARVE_AFTER_MESSAGES, ge=1, le=1_000_000)
    priority_aging_s: float = Field(DEFAULT_PRIORITY_AGING_S, gt=0, le=24 * 3600)
    # The null engine sleeps this long per batch, as a GPU-bound worker would spend on a
    # forward pass: scheduling and scaling measured without a model.
    null_batch_ms: int = Field(0, ge=0, le=600_000)
    # Workers serve Prometheus metrics on this port (0: a free one, logged); unset: none.
    metrics_port: int | None = Field(None, ge=0, le=65_535)
    # Logs: text (human) or json (one JSON object per line); prompt text only when asked.
    log_format: str = Field(DEFAULT_LOG_FORMAT, pattern=r"^(text|json)$")
    log_prompts: bool = False
    # Celery task events and remote control, for Flower and `celery inspect` (off: each event
    # is a Redis publish per task, and remote control a pub/sub connection per worker).
    celery_events: bool = False
    # Where job records and results live (default: GENQ_REDIS_URL, the broker's Redis), so the
    # queue and the results can be scaled apart.
    results_url: str | None = None
    # Reliability drills only: a JSON fault plan (genq/worker/engines/faults.py) that makes the
    # engine fail for chosen items. Never set it in production.
    faults: str | None = None

    @field_validator("queue")
    @classmethod
    def _not_a_broker_key(cls, value: str) -> str:
        # Queues live beside kombu's bookkeeping and the dead-letter list, under one prefix.
        if value in RESERVED_QUEUE_NAMES:
            raise ValueError(
                f"{value!r} is the name of one of genq's own keys "
                f"({', '.join(sorted(RESERVED_QUEUE_NAMES))}); choose another queue name"
            )
        return value

    @model_validator(mode="after")
    def _lease_outlasts_heartbeats(self) -> Settings:
        if self.lease_s < LEASE_HEARTBEATS * self.heartbeat_s:
            raise ValueError(
                f"GENQ_LEASE_S ({self.lease_s}) must be at least {LEASE_HEARTBEATS} heartbeats "
                f"(GENQ_HEARTBEAT_S={self.heartbeat_s}): a lease renewed less often than that "
                "would expire under a healthy worker"
            )
        return self

    def chunk_size_for(self, items: int) -> int:
        """Prompts per queue message for a job of ``items``: GENQ_CHUNK_SIZE, else by size."""
        if self.chunk_size is not None:
            return self.chunk_size
        return min(
            max(-(-items // CHUNK_TARGET_MESSAGES), MIN_AUTO_CHUNK_SIZE), MAX_AUTO_CHUNK_SIZE
        )

    def resolved_max_batch_tokens(self, device: str) -> int:
        """The batch token budget: GENQ_MAX_BATCH_TOKENS, else a default for the device."""
        if self.max_batch_tokens is not None:
            return self.max_batch_tokens
        if device.startswith("cuda"):
            return DEFAULT_MAX_BATCH_TOKENS_CUDA
        return DEFAULT_MAX_BATCH_TOKENS_CPU


def load_settings(**overrides: object) -> Settings:
    """Settings from GENQ_* variables and ``overrides``; a bad value raises ConfigError."""
    from pydantic import ValidationError

    from genq.errors import ConfigError

    try:
        base = Settings()
        return Settings.model_validate({**base.model_dump(), **overrides}) if overrides else base
    except ValidationError as e:
        problems = "; ".join(
            f"GENQ_{'_'.join(str(p) for p in err['loc']).upper()}: "
            + err["msg"].removeprefix("Value error, ")
            if err["loc"]
            else err["msg"].removeprefix("Value error, ")
            for err in e.errors(include_url=False)
        )
        raise ConfigError(f"invalid configuration: {problems}") from None


_PASSWORD_PARAM = re.compile(r"(?i)(password=)[^&]*")


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``, safe for logs and error messages.

    Works on the text rather than a parsed URL: a password holding ``/``, ``#`` or ``?`` would
    make a URL parser find none, and echo it.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<not a URL>"
    if "@" in rest:
        credentials, host = rest.rsplit("@", 1)
        user = credentials.split(":", 1)[0] if ":" in credentials else ""
        rest = f"{user}:***@{host}"
    return _PASSWORD_PARAM.sub(r"\1***", f"{scheme}://{rest}")
