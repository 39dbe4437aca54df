"""A batch's output and error files, written once its job has ended (``finalizing``): every
result in input order as OpenAI's output lines, by whichever API process (or webhook sender)
gets the batch's lock first."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import redis

from genq import keyspace
from genq.api.file_store import FileStore, new_file_id
from genq.api.openai_results import expired_line, is_expired, output_line
from genq.schema import ItemResult
from genq.settings import FINALIZE_LOCK_S, Settings

PREFIX = "batch_"
PAGE = 1000  # results read this many at a time


class BatchOutput:
    """Writes batches' output files into :class:`FileStore`."""

    def __init__(self, client: redis.Redis, files: FileStore, settings: Settings) -> None:
        self.redis = client
        self.files = files
        self.settings = settings

    def write(self, job_id: str, batch: dict[str, str], job: dict[str, str]) -> bool:
        """Write the batch's output and error files (once, by one process); True if this
        call did it."""
        lock = keyspace.batch_finalize_lock(job_id)
        token = secrets.token_hex(8)
        if not self.redis.set(lock, token, nx=True, ex=FINALIZE_LOCK_S):
            return False
        tenant, endpoint, model = batch["tenant"], batch["endpoint"], batch.get("model") or ""
        out_id, err_id = new_file_id(), new_file_id()
        out, err = self.files.writer(out_id), self.files.writer(err_id)
        counts = {"total": int(job["total"]), "completed": 0, "failed": 0}
        usage = {"input_tokens": 0, "output_tokens": 0}
        created = int(float(job.get("finished_at") or time.time()))
        try:
            for start in range(0, int(job["total"]), PAGE):
                indexes = [str(i) for i in range(start, min(start + PAGE, int(job["total"])))]
                with self.redis.pipeline(transaction=False) as pipe:
                    pipe.hmget(keyspace.results(job_id), indexes)
                    pipe.lrange(keyspace.batch_custom_ids(job_id), start, start + PAGE - 1)
                    values, ids = pipe.execute()
                for i, value in enumerate(values):
                    index = start + i
                    if value is None:
                        if job["status"] == "expired" and i < len(ids):
                            counts["failed"] += 1
                            err.write(_jsonl(expired_line(job_id, index, ids[i])))
                        continue
                    result = ItemResult.model_validate_json(value)
                    usage["input_tokens"] += result.usage.prompt_tokens
                    usage["output_tokens"] += result.usage.completion_tokens
                    if result.ok:
                        counts["completed"] += 1
                        out.write(_jsonl(output_line(endpoint, job_id, result, model, created)))
                    else:
                        counts["failed"] += 1
                        line = (
                            expired_line(job_id, index, result.custom_id)
                            if is_expired(result)
                            else output_line(endpoint, job_id, result, model, created)
                        )
                        err.write(_jsonl(line))
            out.close()
            err.close()
            ttl = int(batch.get("output_ttl_s") or self.settings.file_ttl_s)
            fields = {
                "counts": json.dumps(counts),
                "finalized_at": repr(time.time()),
                "usage": json.dumps(
                    {
                        **usage,
                        "total_tokens": sum(usage.values()),
                        "input_tokens_details": {"cached_tokens": 0},
                        "output_tokens_details": {"reasoning_tokens": 0},
                    }
                ),
            }
            keep_s = max(ttl, self.settings.result_ttl_s)
            with self.redis.pipeline(transaction=True) as pipe:
                # Committed only while this call still holds the lock: a write that outlived
                # it (FINALIZE_LOCK_S) may have been redone by another process meanwhile.
                pipe.watch(lock)  # type: ignore[no-untyped-call]
                if pipe.get(lock) != token:
                    raise redis.WatchError
                pipe.multi()
                for file_id, writer, kind in ((out_id, out, "output"), (err_id, err, "error")):
                    if writer.size:
                        name = f"{PREFIX}{job_id}_{kind}.jsonl"
                        self.files.commit_output(pipe, tenant, file_id, name, writer.size, ttl)
                        fields[f"{kind}_file_id"] = file_id
                pipe.hset(keyspace.batch(job_id), mapping=fields)  # type: ignore[arg-type]
                # The batch stays readable as long as its files: its job record too.
                pipe.expire(keyspace.batch(job_id), keep_s)
                pipe.expire(keyspace.job(job_id), keep_s)
                pipe.execute()
        except redis.WatchError:
            self.redis.delete(keyspace.file_data(out_id), keyspace.file_data(err_id))
            return False
        except BaseException:
            self.redis.delete(lock, keyspace.file_data(out_id), keyspace.file_data(err_id))
            raise
        return True


# Characters that end a line for str.splitlines() (and some JSON Lines readers) but that JSON
# leaves unescaped inside strings: escaped, so that each output line is one line to any reader.
_LINE_BREAKS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def _jsonl(line: dict[str, Any]) -> bytes:
    text = json.dumps(line, ensure_ascii=False, separators=(",", ":")).translate(_LINE_BREAKS)
    return text.encode("utf-8", "surrogatepass") + b"\n"
