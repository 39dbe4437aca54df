"""genq results as OpenAI's objects (genq.api.openai_results): batch output and error lines,
their response bodies and statuses, and ids stable across a finalisation done twice."""

from __future__ import annotations

from genq.api.lines import CHAT_COMPLETIONS, COMPLETIONS
from genq.api.openai_results import expired_line, output_line
from genq.schema import ErrorInfo, ItemResult, Usage


def test_results_become_openai_output_lines() -> None:
    ok = ItemResult(
        custom_id="a",
        index=0,
        prompt="p",
        outputs=["x", "y"],
        finish_reasons=["eos", "length"],
        usage=Usage(prompt_tokens=2, completion_tokens=5),
    )
    line = output_line(COMPLETIONS, "j", ok, "gpt2", 100)
    assert line["custom_id"] == "a"
    assert line["error"] is None
    answer = line["response"]["body"]
    assert [c["finish_reason"] for c in answer["choices"]] == ["stop", "length"]
    assert answer["usage"] == {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7}
    chat = output_line(CHAT_COMPLETIONS, "j", ok, "gpt2", 100)["response"]["body"]
    assert chat["object"] == "chat.completion"
    assert chat["choices"][0]["message"] == {"role": "assistant", "content": "x", "refusal": None}
    too_long = ItemResult(
        custom_id="b",
        index=1,
        prompt="p",
        error=ErrorInfo(type="context_length_exceeded", message="too long"),
    )
    assert output_line(COMPLETIONS, "j", too_long, "gpt2", 1)["response"]["status_code"] == 400
    lost = ItemResult(
        custom_id="c", index=2, prompt="p", error=ErrorInfo(type="worker_lost", message="gone")
    )
    assert output_line(COMPLETIONS, "j", lost, "gpt2", 1)["response"]["status_code"] == 500
    expired = expired_line("j", 3, "d")
    assert expired["response"] is None
    assert expired["error"]["code"] == "batch_expired"
    # Ids are stable: a finalisation done twice writes the same lines.
    assert output_line(COMPLETIONS, "j", ok, "gpt2", 100) == line
