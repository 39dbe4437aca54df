"""ScriptPipeline: scripts go out as EVALSHA in one round trip; a script the server has
forgotten (SCRIPT FLUSH, a restart, a failover) is loaded and its calls sent again, and
nothing runs twice. Against a Redis of this module's own (it flushes scripts)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from conftest import RedisProcess
from redis.exceptions import NoScriptError, ResponseError

from genq.connection import connect
from genq.pipelines import script_pipeline
from genq.producer.enqueueing import new_job_id
from genq.registry import BatchStats
from genq.schema import ItemResult, JobItem, JobSpec
from genq.submissions import NewJob, SubmissionStore
from genq.worker.work_store import WorkStore


class Store(SubmissionStore, WorkStore):
    """Both sides' stores on one client: create a job, then start and record its items."""


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path_factory.mktemp("pipelines-redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def r(own_redis: RedisProcess) -> redis.Redis:
    return connect(own_redis.url)


def result(index: int) -> ItemResult:
    return ItemResult(custom_id=str(index), index=index, prompt=f"p{index}", outputs=["o"])


def test_a_flushed_script_is_loaded_again_and_every_count_moves_once(r: redis.Redis) -> None:
    store = Store(r, 100)
    job_id = new_job_id()
    store.create_job(job_id, NewJob.of(JobSpec(items=[JobItem(prompt=f"p{i}") for i in range(4)])))
    r.script_flush()
    _, attempts = store.start({job_id: [0, 1]})
    assert attempts == {(job_id, 0): 1, (job_id, 1): 1}
    r.script_flush()
    batch = BatchStats(worker_id="w-flush", sequences=2, items=2, tokens=10, busy_s=0.5)
    assert store.record({job_id: [result(0), result(1)]}, batch) == {job_id: 2}
    r.script_flush()
    assert store.record({job_id: [result(0), result(2)]}, batch) == {job_id: 1}
    assert store.get(job_id).completed == 3
    worker = r.hgetall("genq:worker:w-flush")
    assert (worker["batches"], worker["items"], worker["tokens"]) == ("2", "4", "20")


def test_no_script_exists_round_trip_while_the_server_knows_the_script(r: redis.Redis) -> None:
    script = r.register_script("return 7")
    r.script_load(script.script)
    r.config_resetstat()
    with script_pipeline(r) as pipe:
        script(client=pipe)
        pipe.echo("x")
        assert pipe.execute() == [7, "x"]
    stats = r.info("commandstats")
    assert "cmdstat_script|exists" not in stats
    assert "cmdstat_script" not in stats
    assert stats["cmdstat_evalsha"]["calls"] == 1


def test_replies_keep_their_places_when_one_of_two_scripts_was_forgotten(r: redis.Redis) -> None:
    a = r.register_script("return 'a'")
    b = r.register_script("return 'b'")
    r.script_flush()
    r.script_load(b.script)
    with script_pipeline(r) as pipe:
        a(client=pipe)
        pipe.echo("x")
        b(client=pipe)
        a(client=pipe)
        assert pipe.execute() == ["a", "x", "b", "a"]


def test_a_script_error_is_raised_with_its_place_in_the_pipeline(r: redis.Redis) -> None:
    bad = r.register_script("return redis.error_reply('boom')")
    r.script_flush()
    with script_pipeline(r) as pipe:
        pipe.set("pipelines:a", 1)
        bad(client=pipe)
        with pytest.raises(ResponseError, match=r"Command # 2 .*boom"):
            pipe.execute()
    with script_pipeline(r) as pipe:
        pipe.set("pipelines:a", 1)
        bad(client=pipe)
        first, second = pipe.execute(raise_on_error=False)
        assert first is True
        assert isinstance(second, ResponseError)
        assert not isinstance(second, NoScriptError)


def test_a_script_that_cannot_be_loaded_reports_why(
    r: redis.Redis, own_redis: RedisProcess
) -> None:
    # A user allowed EVALSHA but not SCRIPT LOAD: the error names the refused load.
    r.acl_setuser(
        "pipelines-noload",
        enabled=True,
        passwords=["+pw-noload"],
        keys=["*"],
        commands=["+@all", "-script|load"],
    )
    limited = connect(own_redis.url.replace("redis://", "redis://pipelines-noload:pw-noload@"))
    script = limited.register_script("return 'never loaded'")
    r.script_flush()
    with script_pipeline(limited) as pipe:
        script(client=pipe)
        with pytest.raises(ResponseError, match=r"(?i)permission|NOPERM"):
            pipe.execute()
