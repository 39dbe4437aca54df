"""Pipelines that run genq's Lua scripts in one round trip.

redis-py sends ``SCRIPT EXISTS`` before every pipeline that holds a registered script, a
second round trip each time; a worker writes results in such a pipeline for every batch, so
half its Redis round trips were that check. Here ``EVALSHA`` goes straight out, and a script
the server does not know (after a restart, a failover or ``SCRIPT FLUSH``) is loaded and its
calls sent again: a ``NOSCRIPT`` reply means the script did not run, so nothing runs twice.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.client import Pipeline
from redis.exceptions import NoScriptError


class ScriptPipeline(Pipeline):  # type: ignore[misc]
    """A non-transactional pipeline whose scripts are not checked before it is sent."""

    def load_scripts(self) -> None:
        """Nothing up front: :meth:`execute` loads a script only when the server lacks it."""

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        stack = list(self.command_stack)
        scripts = {script.sha: script for script in self.scripts}
        replies: list[Any] = super().execute(raise_on_error=False)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing and scripts:
            unknown = [scripts[sha] for sha in {stack[i][0][1] for i in missing} if sha in scripts]
            for script in unknown:
                self.script_load(script.script)
            for i in missing:
                args, options = stack[i]
                self.execute_command(*args, **options)  # type: ignore[no-untyped-call]
            again = super().execute(raise_on_error=False)
            loads, again = again[: len(unknown)], again[len(unknown) :]
            for i, reply in zip(missing, again, strict=True):
                # A script that could not be loaded (no permission, out of memory): that is
                # the error to tell, not the NOSCRIPT that followed.
                load_error = next((r for r in loads if isinstance(r, Exception)), None)
                replies[i] = (
                    load_error if isinstance(reply, NoScriptError) and load_error else reply
                )
        if raise_on_error:
            for i, reply in enumerate(replies):
                if isinstance(reply, Exception):
                    self.annotate_exception(reply, i + 1, stack[i][0])  # type: ignore[no-untyped-call]
                    raise reply
        return replies


def script_pipeline(client: redis.Redis) -> ScriptPipeline:
    """A :class:`ScriptPipeline` on ``client``'s connection pool (use it as a context manager)."""
    return ScriptPipeline(client.connection_pool, client.response_callbacks, False, None)
