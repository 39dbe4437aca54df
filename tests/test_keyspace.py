"""Every key lives under one prefix and is built by one helper."""

from __future__ import annotations

import pytest

from genq import keyspace


def test_every_key_has_the_genq_prefix() -> None:
    keys = [
        keyspace.job("abc"),
        keyspace.results("abc"),
        keyspace.jobs_index(),
        keyspace.workers_index(),
        keyspace.worker("w1"),
        keyspace.worker_batches("w1"),
        keyspace.celery_prefix(),
    ]
    assert all(k.startswith("genq:") for k in keys)
    assert len(set(keys)) == len(keys)


@pytest.mark.parametrize("bad", ["", "a:b", "a*", "a b", "x" * 129, "../etc"])
def test_ids_that_could_escape_their_key_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid job id"):
        keyspace.job(bad)
