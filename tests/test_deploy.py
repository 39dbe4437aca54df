"""Deployment: docker-compose.yml against the Compose Specification's JSON schema, the wiring
between compose, Prometheus and Grafana, the GPU claim that gives each worker replica its own
GPU, and the Grafana dashboard's metric names against a live scrape of a real worker and a real
`genq api`. No Docker engine needed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml
from api_support import ApiProcess, api_for
from conftest import RedisProcess, StartWorker
from prometheus_client.parser import text_string_to_metric_families

from genq.producer.client import Client
from genq.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
# The Compose Specification's JSON schema: the shared/ folder's beside the repository when the
# checkout has one, else the copy kept with the tests (the same file, Apache-2.0, its LICENSE
# beside it), so that a clone anywhere validates.
SHARED_COMPOSE_SPEC = ROOT.parent / "shared" / "compose-spec" / "compose-spec.json"
KEPT_COMPOSE_SPEC = ROOT / "tests" / "data" / "compose-spec" / "compose-spec.json"
COMPOSE_FILE = ROOT / "docker-compose.yml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
DASHBOARD = DASHBOARDS / "genq.json"
GPU_CLAIM = ROOT / "docker" / "gpu-claim.sh"

QUEUE = "deploy"
KEY = "sk-genq-deploy-0123456789ab"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = load_yaml(COMPOSE_FILE)
    return loaded


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """A service's volumes in short syntax: container path -> source (a path or a volume)."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = str(volume).split(":")[:2]
        out[target] = source
    return out


def bind_source(service: dict[str, Any], target: str) -> Path:
    """The repository path mounted at ``target`` in ``service`` (a bind mount of ./...)."""
    source = mounts(service).get(target)
    assert source is not None, f"nothing is mounted at {target}: {service.get('volumes')}"
    assert source.startswith("./"), f"{target} is not a bind mount of the repository: {source}"
    return ROOT / source


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(str(e).partition("=")[::2] for e in env)
    return {str(k): str(v) for k, v in env.items()}


def dockerfile_targets(path: Path) -> set[str]:
    return set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", path.read_text(), re.MULTILINE | re.I))


# --- the compose file ---------------------------------------------------------------------------


def declared_validator(schema: dict[str, Any]) -> type[Any]:
    """The jsonschema validator of the draft the schema declares in ``$schema`` (its URI written
    with or without the trailing ``#``, over http or https)."""
    declared = schema.get("$schema")
    assert isinstance(declared, str), "the compose schema declares no $schema"

    # jsonschema knows each draft by its URI as the draft spells it: http, and for drafts
    # before 2019-09 a trailing "#" (the compose schema leaves it out).
    for uri in {declared, declared.rstrip("#") + "#", declared.rstrip("#")}:
        uri = re.sub(r"^https://", "http://", uri)
        draft = jsonschema.validators.validator_for({"$schema": uri}, default=None)
        if draft is not None:
            return draft  # type: ignore[no-any-return]
    raise AssertionError(f"jsonschema has no validator for the declared draft {declared}")


def compose_schema() -> dict[str, Any]:
    """The Compose Specification's JSON schema: shared/'s when there is one beside the
    repository, else the copy kept with the tests."""
    path = SHARED_COMPOSE_SPEC if SHARED_COMPOSE_SPEC.is_file() else KEPT_COMPOSE_SPEC
    assert path.is_file(), f"the Compose Specification's JSON schema is missing: {path}"
    schema: dict[str, Any] = json.loads(path.read_text())
    return schema


def test_the_kept_compose_schema_is_the_shared_one_when_there_is_one() -> None:
    if not SHARED_COMPOSE_SPEC.is_file():
        pytest.skip(f"no shared/ folder beside this checkout ({SHARED_COMPOSE_SPEC.parent})")
    assert KEPT_COMPOSE_SPEC.read_bytes() == SHARED_COMPOSE_SPEC.read_bytes()


def test_the_compose_file_is_valid_against_the_compose_specification(
    compose: dict[str, Any],
) -> None:
    schema = compose_schema()
    validator_class = declared_validator(schema)
    validator_class.check_schema(schema)
    errors = sorted(validator_class(schema).iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, (
        "docker-compose.yml does not follow the Compose Specification:\n"
        + "\n".join(
            f"  {'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors
        )
    )
    # The validation has teeth: a misspelt key is refused.
    broken = {**compose, "services": {**services(compose), "worker": {"imagee": "genq"}}}
    assert not validator_class(schema).is_valid(broken)


def test_the_acl_override_in_the_deployment_guide_is_a_valid_compose_file() -> None:
    guide = (ROOT / "docs" / "deployment.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", guide, re.DOTALL)
    block = next(b for b in blocks if "--aclfile" in b)
    override = yaml.safe_load(block)
    schema = compose_schema()
    declared_validator(schema)(schema).validate(override)
    assert set(override["services"]) <= set(services(load_yaml(COMPOSE_FILE)))
    assert "--aclfile" in override["services"]["redis"]["command"]


def test_redis_asks_for_a_password_and_keeps_an_append_only_file(compose: dict[str, Any]) -> None:
    redis = services(compose)["redis"]
    command = [str(part) for part in redis["command"]]
    assert command[0] == "redis-server"
    options = dict(zip(command[1::2], command[2::2], strict=True))
    assert options["--appendonly"] == "yes"
    assert options["--appendfsync"] == "everysec"
    assert options["--maxmemory-policy"] == "noeviction"
    # The password comes from the environment, and compose stops when it is unset.
    assert re.fullmatch(r"\$\{GENQ_REDIS_PASSWORD:\?[^}]+\}", options["--requirepass"])
    assert mounts(redis)["/data"] in compose["volumes"]  # a named volume keeps the AOF
    assert redis["healthcheck"]["test"]
    for port in redis.get("ports", []):  # on this host only, if at all
        assert str(port).startswith("127.0.0.1:"), port
    # Every genq service logs in with that password, at the redis service.
    for name, service in services(compose).items():
        url = environment(service).get("GENQ_REDIS_URL")
        if name in ("api", "worker", "producer"):
            assert url is not None, f"{name} has no GENQ_REDIS_URL"
        if url is not None:
            assert re.fullmatch(
                r"redis://:\$\{GENQ_REDIS_PASSWORD(:\?[^}]+)?\}@redis:6379/\d+", url
            )
            assert service["depends_on"]["redis"]["condition"] == "service_healthy"


def test_workers_scale_one_gpu_each(compose: dict[str, Any]) -> None:
    worker = services(compose)["worker"]
    # --scale worker=N: nothing that two replicas could not both have.
    assert "container_name" not in worker
    assert "ports" not in worker, "a fixed host port collides between replicas"
    assert "hostname" not in worker
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    assert devices[0]["driver"] == "nvidia"
    assert "gpu" in devices[0]["capabilities"]
    # Docker turns `count: 1` into GPU 0 for every replica, so each sees all GPUs and claims one.
    assert devices[0]["count"] == "all"
    assert worker["entrypoint"][:2] == ["genq-gpu-claim", "genq"]
    assert worker["command"][0] == "worker"
    claims = mounts(worker)["/run/genq/gpus"]
    assert claims in compose["volumes"], "the GPU claims live in a volume every replica shares"
    dockerfile = ROOT / worker["build"]["dockerfile"]
    assert re.search(
        r"^COPY .*docker/gpu-claim\.sh /usr/local/bin/genq-gpu-claim$",
        dockerfile.read_text(),
        re.MULTILINE,
    )
    assert "/run/genq/gpus" in dockerfile.read_text()  # created for the unprivileged user
    env = environment(worker)
    assert int(env["GENQ_METRICS_PORT"]) > 0
    assert env["GENQ_METRICS_PORT"] in [str(p) for p in worker["expose"]]
    assert mounts(worker)["/cache"] in compose["volumes"], "the model cache is a volume"


def test_images_build_from_the_repository_s_dockerfiles(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        build = service.get("build")
        if build is None:
            image = str(service["image"])  # a public image, at a pinned version
            assert ":" in image, name
            assert not image.endswith(":latest"), name
            continue
        dockerfile = ROOT / build.get("context", ".") / build["dockerfile"]
        assert dockerfile.is_file(), f"{name}: no {dockerfile}"
        if "target" in build:
            assert build["target"] in dockerfile_targets(dockerfile), f"{name}: {build}"
    assert services(compose)["api"]["build"]["target"] == "api"  # the producer side: no torch
    for path in (ROOT / "docker").glob("Dockerfile.*"):
        text = path.read_text()
        assert re.search(r"^USER genq$", text, re.MULTILINE), f"{path.name} runs as root"
        assert re.search(r'^ENTRYPOINT \["genq"\]$', text, re.MULTILINE), path.name
        assert "torch==${TORCH_VERSION}" in text, path.name
        assert "TORCH_VERSION=2.13.0" in text, path.name
    cpu = (ROOT / "docker" / "Dockerfile.cpu").read_text()
    assert "--index-url https://download.pytorch.org/whl/cpu" in cpu
    api_stage = cpu.split("FROM venv AS api-build", 1)[1].split("FROM", 1)[0]
    assert "torch" not in api_stage
    assert "[worker]" not in api_stage
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "models"} <= {line.strip("/") for line in ignored}


def test_the_monitoring_profile_holds_prometheus_and_grafana(compose: dict[str, Any]) -> None:
    profiles = {name: s.get("profiles", []) for name, s in services(compose).items()}
    assert profiles["prometheus"] == ["monitoring"]
    assert profiles["grafana"] == ["monitoring"]
    assert {n for n, p in profiles.items() if "monitoring" in p} == {"prometheus", "grafana"}
    for always in ("redis", "api", "worker"):
        assert profiles[always] == [], f"{always} must start without a profile"


def test_prometheus_scrapes_the_api_and_every_worker(compose: dict[str, Any]) -> None:
    prometheus = services(compose)["prometheus"]
    config_flag = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    assert bind_source(prometheus, config_flag.split("=", 1)[1]) == PROMETHEUS_CONFIG
    jobs = {job["job_name"]: job for job in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]}

    api = services(compose)["api"]
    api_port = api["command"][api["command"].index("--port") + 1]
    targets = [t for c in jobs["genq-api"]["static_configs"] for t in c["targets"]]
    assert targets == [f"api:{api_port}"]
    assert jobs["genq-api"].get("metrics_path", "/metrics") == "/metrics"

    worker_port = int(environment(services(compose)["worker"])["GENQ_METRICS_PORT"])
    (discovery,) = jobs["genq-worker"]["dns_sd_configs"]
    assert discovery["names"] == ["worker"]  # Docker's DNS: one A record per replica
    assert discovery["type"] == "A"
    assert discovery["port"] == worker_port
    assert "static_configs" not in jobs["genq-worker"]
    for job in jobs.values():
        for config in job.get("dns_sd_configs", []):
            assert set(config["names"]) <= set(services(compose))


def test_grafana_is_provisioned_with_the_dashboard_compose_mounts(compose: dict[str, Any]) -> None:
    grafana = services(compose)["grafana"]
    assert bind_source(grafana, "/etc/grafana/provisioning") == PROVISIONING
    (datasource,) = [
        d
        for f in sorted((PROVISIONING / "datasources").glob("*.yml"))
        for d in load_yaml(f)["datasources"]
    ]
    assert datasource["type"] == "prometheus"
    prometheus_port = str(services(compose)["prometheus"]["ports"][0]).rsplit(":", 1)[1]
    assert datasource["url"] == f"http://prometheus:{prometheus_port}"
    (provider,) = [
        p
        for f in sorted((PROVISIONING / "dashboards").glob("*.yml"))
        for p in load_yaml(f)["providers"]
    ]
    assert provider["type"] == "file"
    mounted = provider["options"]["path"]
    assert bind_source(grafana, mounted) == DASHBOARDS
    assert DASHBOARD.is_file()
    home = environment(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{mounted}/{DASHBOARD.name}"
    dashboard = json.loads(DASHBOARD.read_text())
    uids = {p["datasource"]["uid"] for p in dashboard["panels"]}
    uids |= {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
    assert uids == {datasource["uid"]}


# --- the GPU claim ------------------------------------------------------------------------------


@pytest.fixture
def claim(tmp_path: Path) -> Iterator[Any]:
    """Run docker/gpu-claim.sh as a replica would, with GENQ_GPUS GPUs to share out."""
    started: list[subprocess.Popen[str]] = []

    def run(gpus: int, *command: str) -> subprocess.Popen[str]:
        env = {**os.environ, "GENQ_GPUS": str(gpus), "GENQ_GPU_CLAIMS": str(tmp_path)}
        env.pop("CUDA_VISIBLE_DEVICES", None)
        process = subprocess.Popen(
            ["sh", str(GPU_CLAIM), *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        started.append(process)
        return process

    yield run
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


HOLD = ("sh", "-c", 'echo "gpu=$CUDA_VISIBLE_DEVICES"; exec sleep 60')


def test_each_replica_claims_its_own_gpu_until_it_exits(claim: Any) -> None:
    first = claim(2, *HOLD)
    assert first.stdout.readline().strip() == "gpu=0"
    second = claim(2, *HOLD)
    assert second.stdout.readline().strip() == "gpu=1"
    third = claim(2, *HOLD)
    assert third.wait(10) == 1
    assert "all 2 GPUs are held by other workers" in third.stderr.read()
    first.send_signal(signal.SIGKILL)  # the kernel drops the lock with the process
    first.wait(10)
    again = claim(2, *HOLD)
    assert again.stdout.readline().strip() == "gpu=0"


# --- the dashboard against a live scrape --------------------------------------------------------

AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}  # fmt: skip
FUNCTIONS = {
    "abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min",
    "day_of_month", "day_of_week", "day_of_year", "days_in_month", "delta", "deriv", "exp",
    "floor", "histogram_avg", "histogram_count", "histogram_fraction", "histogram_quantile",
    "histogram_sum", "histogram_stddev", "histogram_stdvar", "holt_winters", "hour", "idelta",
    "increase", "irate", "label_join", "label_replace", "ln", "log2", "log10", "minute",
    "month", "predict_linear", "rate", "resets", "round", "scalar", "sgn", "sort", "sort_desc",
    "sqrt", "time", "timestamp", "vector", "year", "avg_over_time", "min_over_time",
    "max_over_time", "sum_over_time", "count_over_time", "quantile_over_time",
    "stddev_over_time", "stdvar_over_time", "last_over_time", "present_over_time",
}  # fmt: skip
KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "group_left", "group_right",
}  # fmt: skip
GROUPING = r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)"
TARGET_LABELS = {"instance", "job"}  # what Prometheus adds to every series it scrapes


@dataclass
class Query:
    """What one PromQL expression names."""

    metrics: set[str] = field(default_factory=set)
    functions: set[str] = field(default_factory=set)
    labels: set[str] = field(default_factory=set)
    rated: set[str] = field(default_factory=set)  # series inside rate(), irate(), increase()


def parse_promql(expr: str) -> Query:
    """The metric names, functions and label names in ``expr`` (a regex reading: strings,
    ranges and label matchers are cut out, and identifiers before ``(`` are functions)."""
    query = Query()
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\[[^\]]*\]", "", text)  # [5m], [$__rate_interval], subqueries
    for matchers in re.findall(r"\{([^}]*)\}", text):
        query.labels |= set(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", matchers))
    text = re.sub(r"\{[^}]*\}", "", text)
    for grouping in re.findall(GROUPING, text):
        query.labels |= {label.strip() for label in grouping.split(",") if label.strip()}
    text = re.sub(GROUPING, " ", text)
    query.rated = set(re.findall(r"\b(?:rate|irate|increase)\s*\(\s*([A-Za-z_:][\w:]*)", text))
    for found in re.finditer(r"(?<![\w.:$])([A-Za-z_:][\w:]*)(\s*\()?", text):
        name, call = found.group(1), found.group(2)
        if call:
            query.functions.add(name)
        elif name.lower() not in KEYWORDS:
            query.metrics.add(name)
    return query


def test_the_promql_reading_finds_metrics_functions_and_labels() -> None:
    q = parse_promql(
        "histogram_quantile(0.95, sum by (le, route) (rate(genq_api_request_seconds_bucket"
        '{status=~"5..", method!="GET"}[$__rate_interval] offset 5m)))'
        " / on(instance) group_left max(up) > bool 1e3"
    )
    assert q.metrics == {"genq_api_request_seconds_bucket", "up"}
    assert q.functions == {"histogram_quantile", "sum", "rate", "max"}
    assert q.labels == {"le", "route", "status", "method", "instance"}
    assert q.rated == {"genq_api_request_seconds_bucket"}


@dataclass
class Series:
    kind: str  # the family's type: counter, histogram, gauge...
    labels: set[str]


def exported_series(page: str) -> dict[str, Series]:
    """Every series name a /metrics page serves, with its family's type and the label names its
    samples carry: a counter family as NAME_total, a histogram as NAME_bucket, _sum and _count."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    found: dict[str, Series] = {}
    for family in text_string_to_metric_families(page):
        for suffix in suffixes.get(family.type, ("",)):
            found[family.name + suffix] = Series(family.type, set())
        for sample in family.samples:
            found.setdefault(sample.name, Series(family.type, set()))
            found[sample.name].labels |= set(sample.labels)
    return found


@pytest.fixture
def api(redis_server: RedisProcess, tmp_path: Path) -> Iterator[ApiProcess]:
    with api_for(redis_server.url, tmp_path / "api.log", QUEUE, KEY) as server:
        yield server


def live_series(
    start_worker: StartWorker, settings: Settings, api: ApiProcess
) -> dict[str, Series]:
    """The series of a real worker (null engine, one item made to fail) after a job, and of a
    real `genq api` after a few requests."""
    worker = start_worker(
        queue=QUEUE,
        engine="null",
        metrics_port="0",
        max_attempts="1",
        faults=json.dumps({"raise_on": ["POISON"]}),
    )
    found = re.search(r"metrics on http://0\.0\.0\.0:(\d+)/metrics", worker.output())
    assert found, worker.output()
    client = Client(settings=settings.model_copy(update={"queue": QUEUE}))
    job_id = client.submit(["tagline one", "tagline two", "POISON"], {"max_new_tokens": 4})
    info = client.wait(job_id, timeout_s=60)
    assert info.failed >= 1, info  # so the failures' error_type label is on the page
    assert httpx.get(f"{api.url}/v1/models").status_code == 401
    pages = [
        httpx.get(f"http://127.0.0.1:{found.group(1)}/metrics", timeout=10).text,
        httpx.get(f"{api.url}/metrics", timeout=10).text,
    ]
    series: dict[str, Series] = {}
    for page in pages:
        for name, s in exported_series(page).items():
            series.setdefault(name, Series(s.kind, set())).labels |= s.labels
    return series


def test_every_dashboard_panel_queries_only_metrics_genq_exports(
    start_worker: StartWorker, settings: Settings, api: ApiProcess
) -> None:
    series = live_series(start_worker, settings, api)
    assert "genq_items_completed_total" in series
    assert "genq_api_requests_total" in series
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert panels, "the dashboard has no panels"
    assert len({p["id"] for p in panels}) == len(panels), "panel ids repeat"
    problems: list[str] = []
    referenced: set[str] = set()
    for panel in panels:
        where = f"panel {panel['title']!r}"
        exprs = [str(t.get("expr", "")).strip() for t in panel.get("targets", [])]
        if not exprs or not all(exprs):
            problems.append(f"{where}: every panel needs at least one target with an expression")
        for expr in exprs:
            q = parse_promql(expr)
            referenced |= q.metrics
            if not q.metrics:
                problems.append(f"{where}: {expr!r} names no metric")
            for name in sorted(q.metrics - set(series)):
                problems.append(f"{where}: {name} is not exported by genq ({expr!r})")
            for name in sorted(q.functions - FUNCTIONS - AGGREGATIONS):
                problems.append(f"{where}: {name}() is no PromQL function ({expr!r})")
            known = TARGET_LABELS.union(*(series[m].labels for m in q.metrics if m in series))
            for label in sorted(q.labels - known):
                problems.append(f"{where}: no metric of {expr!r} has the label {label!r}")
            for name in sorted(q.rated & set(series)):
                if series[name].kind not in ("counter", "histogram"):
                    problems.append(f"{where}: rate() of {name}, a {series[name].kind}")
            if "histogram_quantile" in q.functions and not all(
                m.endswith("_bucket") for m in q.metrics
            ):
                problems.append(f"{where}: histogram_quantile() needs _bucket series ({expr!r})")
    assert not problems, "\n".join(problems)
    # Every family the issue lists has a panel.
    families = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in referenced}
    assert families >= {
        "genq_items_completed", "genq_items_failed", "genq_generated_tokens",
        "genq_prompt_tokens", "genq_batch_size", "genq_queue_wait_seconds",
        "genq_generation_seconds", "genq_queue_depth", "genq_items_in_flight",
        "genq_worker_up", "genq_kv_budget_used_ratio", "genq_api_requests",
        "genq_api_request_seconds",
    }  # fmt: skip
