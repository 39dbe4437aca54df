"""Chat items: conversations rendered with a chat template (GENQ_CHAT_TEMPLATE or the model's),
generated like prompts, and the errors when there is no template or it fails."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import StartWorker, WorkerProcess

from genq.connection import connect
from genq.errors import RefusedMessageError, WorkerConfigError
from genq.producer.client import Client
from genq.schema import ChatMessage, ItemResult, JobStatus, WorkChunk, chat_transcript
from genq.settings import Settings
from genq.submissions import NewJob
from genq.worker.engines import load_engine
from genq.worker.engines.chat import (
    EXAMPLE_TEMPLATE,
    ChatTemplateError,
    NoChatTemplate,
    render_with_tokenizer,
)
from genq.worker.engines.faults import FaultPlan, FaultyEngine
from genq.worker.engines.hf import HFEngine
from genq.worker.engines.null import NullEngine
from genq.worker.runner import BatchRunner
from genq.worker.work_store import WorkStore

# Refuses tool messages, so that one template both renders and raises.
TEMPLATE = (
    "{% for m in messages %}"
    "{% if m.role == 'tool' %}{{ raise_exception('tool messages are not supported') }}{% endif %}"
    "<{{ m.role }}>{{ m.content }}\n"
    "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
)
MODEL_TEMPLATE = (
    "{% for m in messages %}### {{ m.role | upper }}: {{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}### ASSISTANT:{% endif %}"
)
CONVERSATION = [
    {"role": "system", "content": "You write taglines."},
    {"role": "user", "content": "One for a bakery, please."},
]
GREEDY = {"max_new_tokens": 8, "do_sample": False}


def messages(conversation: Sequence[dict[str, str]]) -> list[ChatMessage]:
    return [ChatMessage.model_validate(m) for m in conversation]


def rendered(model: Path, conversation: Sequence[dict[str, str]], template: str | None) -> str:
    """The conversation as transformers renders it for generation (the reference)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model))
    text = tokenizer.apply_chat_template(
        list(conversation), chat_template=template, tokenize=False, add_generation_prompt=True
    )
    assert isinstance(text, str)
    return text


def run_job(client: Client, items: list[Any], params: dict[str, Any]) -> list[ItemResult]:
    job_id = client.submit(items, params)
    info = client.wait(job_id, timeout_s=120)
    assert info.status is JobStatus.COMPLETED
    return list(client.iter_results(job_id))


def on_queue(settings: Settings, queue: str) -> Client:
    return Client(settings=settings.model_copy(update={"queue": queue}))


# --- the renderer ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tiny_model: Path) -> HFEngine:
    return HFEngine.load(Settings(model=str(tiny_model), device="cpu"))


@pytest.fixture(scope="module")
def templated_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny model whose tokenizer_config.json carries a chat template."""
    model = tmp_path_factory.mktemp("chat-model") / "tiny-gpt2-chat"
    shutil.copytree(tiny_model, model)
    config_path = model / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "chat_template": MODEL_TEMPLATE}))
    return model


def test_without_any_template_the_error_says_what_to_set(engine: HFEngine) -> None:
    with pytest.raises(NoChatTemplate) as raised:
        engine.render_chat(messages(CONVERSATION))
    assert "has no chat template: set GENQ_CHAT_TEMPLATE on the workers" in str(raised.value)
    assert EXAMPLE_TEMPLATE in str(raised.value)
    # The advice works as given.
    text = engine.render_chat(messages(CONVERSATION), EXAMPLE_TEMPLATE)
    assert text == chat_transcript(messages(CONVERSATION)) + "\nassistant:"


def test_the_configured_template_renders_for_generation(engine: HFEngine, tiny_model: Path) -> None:
    text = engine.render_chat(messages(CONVERSATION), TEMPLATE)
    assert text == "<system>You write taglines.\n<user>One for a bakery, please.\n<assistant>"
    assert text == rendered(tiny_model, CONVERSATION, TEMPLATE)


def test_the_models_template_is_used_and_the_configured_one_wins(templated_model: Path) -> None:
    engine = HFEngine.load(Settings(model=str(templated_model), device="cpu"))
    assert engine.render_chat(messages(CONVERSATION)).endswith("### ASSISTANT:")
    assert engine.render_chat(messages(CONVERSATION), TEMPLATE).endswith("<assistant>")


def test_names_reach_the_template_only_where_given(engine: HFEngine) -> None:
    conversation = [
        {"role": "user", "content": "a", "name": "ann"},
        {"role": "user", "content": "b"},
    ]
    names = "{% for m in messages %}[{{ m.name | default('-') }}]{% endfor %}"
    assert engine.render_chat(messages(conversation), names) == "[ann][-]"


def test_a_template_that_raises_is_a_chat_template_error(engine: HFEngine) -> None:
    with pytest.raises(ChatTemplateError) as raised:
        engine.render_chat(messages([{"role": "tool", "content": "42"}]), TEMPLATE)
    assert not isinstance(raised.value, NoChatTemplate)
    assert "GENQ_CHAT_TEMPLATE failed to render" in str(raised.value)
    assert "tool messages are not supported" in str(raised.value)
    with pytest.raises(ChatTemplateError, match="TypeError"):
        render_with_tokenizer(
            engine.tokenizer, "m", messages(CONVERSATION), "{{ messages[0].content + 1 }}"
        )


def test_null_and_faulty_engines_render_through_the_same_contract(engine: HFEngine) -> None:
    conversation = messages(CONVERSATION)
    assert NullEngine().render_chat(conversation, TEMPLATE) == chat_transcript(conversation)
    faulty = FaultyEngine(engine, FaultPlan())
    assert faulty.render_chat(conversation, TEMPLATE) == engine.render_chat(conversation, TEMPLATE)
    with pytest.raises(NoChatTemplate):
        faulty.render_chat(conversation)


def test_a_template_that_is_not_jinja_stops_the_worker_before_the_model_loads(
    tmp_path: Path,
) -> None:
    settings = Settings(model=str(tmp_path / "no-model"), chat_template="{% for %}")
    with pytest.raises(WorkerConfigError, match="GENQ_CHAT_TEMPLATE is not a valid Jinja"):
        load_engine(settings)


# --- admission: the rendered text is what is tokenised and checked ---------------------------


def chunk_for(client: Client, items: list[Any], **params: Any) -> tuple[str, WorkChunk]:
    spec = client.validate(items, params)
    job_id = client.store.create_job("chat" + str(time.time_ns()), NewJob.of(spec)).id
    (message,) = spec.messages(job_id, time.time(), max_items=10**6)
    return job_id, WorkChunk.model_validate_json(message)


def test_length_checks_count_the_rendered_conversations_tokens(
    client: Client, settings: Settings, engine: HFEngine, tiny_model: Path
) -> None:
    # The template repeats each message: far longer than the transcript the limits count.
    wordy = (
        "{% for m in messages %}{% for _ in range(30) %}{{ m.content }} {% endfor %}{% endfor %}"
    )
    conversation = [{"role": "user", "content": "coffee and cake"}]
    runner = BatchRunner(
        engine,
        WorkStore(connect(settings.redis_url), settings.result_ttl_s),
        settings.model_copy(update={"chat_template": wordy}),
        "w",
    )
    job_id, chunk = chunk_for(
        client,
        [{"messages": conversation}, {"messages": conversation, "params": {"truncate": True}}],
        **GREEDY,
    )
    runner.process([chunk])
    too_long, truncated = client.store.results(job_id)
    assert too_long.error is not None
    assert too_long.error.type == "context_length_exceeded"
    assert "the rendered conversation has" in too_long.error.message
    assert truncated.error is None
    assert truncated.usage.prompt_tokens == 128 - 8
    # The rendered text is too long for 8 new tokens; the transcript would not have been.
    assert len(engine.encode(rendered(tiny_model, conversation, wordy))) > 128 - 8
    assert len(engine.encode(chat_transcript(messages(conversation)))) < 128 - 8


def test_a_message_whose_conversation_is_over_the_size_limit_is_refused(
    client: Client, settings: Settings
) -> None:
    _, chunk = chunk_for(client, [{"messages": CONVERSATION}])
    item = chunk.items[0].model_copy(
        update={"prompt": "x", "messages": messages([{"role": "user", "content": "y" * 200}])}
    )
    hostile = chunk.model_copy(update={"items": [item]})
    limited = settings.model_copy(update={"max_prompt_bytes": 100})
    runner = BatchRunner(NullEngine(), client.store, limited, "w")
    with pytest.raises(RefusedMessageError, match="over this worker's limit of 100"):
        runner.admit(hostile)


# --- real workers ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def configured_worker(start_worker: StartWorker) -> WorkerProcess:
    """Continuous hf batching, the plain tiny model, and GENQ_CHAT_TEMPLATE."""
    return start_worker(queue="chat-configured", chat_template=TEMPLATE, max_wait_ms="200")


def test_a_configured_template_generates_as_its_rendered_text_would(
    configured_worker: WorkerProcess, settings: Settings, tiny_model: Path
) -> None:
    text = rendered(tiny_model, CONVERSATION, TEMPLATE)
    chat, plain = run_job(
        on_queue(settings, "chat-configured"), [{"messages": CONVERSATION}, text], GREEDY
    )
    assert chat.error is None
    assert plain.error is None
    assert chat.outputs == plain.outputs
    assert chat.usage == plain.usage
    assert chat.prompt == chat_transcript(messages(CONVERSATION))


def test_a_template_that_raises_fails_its_item_only(
    configured_worker: WorkerProcess, settings: Settings
) -> None:
    client = on_queue(settings, "chat-configured")
    tool = [{"role": "user", "content": "What is 6 x 7?"}, {"role": "tool", "content": "42"}]
    bad, good, plain = run_job(
        client, [{"messages": tool}, {"messages": CONVERSATION}, "plain prompt"], GREEDY
    )
    assert bad.error is not None
    assert bad.error.type == "invalid_params"
    assert "GENQ_CHAT_TEMPLATE failed to render this conversation" in bad.error.message
    assert "tool messages are not supported" in bad.error.message
    assert good.error is None
    assert plain.error is None
    (again,) = run_job(client, [{"messages": CONVERSATION}], GREEDY)
    assert again.outputs == good.outputs
    assert configured_worker.process.poll() is None


def test_the_models_own_template_is_used(
    start_worker: StartWorker,
    settings: Settings,
    templated_model: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    start_worker(
        queue="chat-model-template",
        model=str(templated_model),
        engine="ct2",
        ct2_compute_type="float32",
        cache_dir=str(tmp_path_factory.mktemp("cache")),
    )
    text = rendered(templated_model, CONVERSATION, None)
    assert text.endswith("### ASSISTANT:")
    chat, plain = run_job(
        on_queue(settings, "chat-model-template"), [{"messages": CONVERSATION}, text], GREEDY
    )
    assert chat.error is None
    assert chat.outputs == plain.outputs
    assert chat.usage == plain.usage


def test_no_template_anywhere_is_a_no_chat_template_error(
    start_worker: StartWorker, settings: Settings
) -> None:
    start_worker(queue="chat-none", batching="static")
    client = on_queue(settings, "chat-none")
    job_id = client.submit(["first", {"messages": CONVERSATION}, "third"], GREEDY)
    info = client.wait(job_id, timeout_s=120)
    assert (info.status, info.completed, info.failed) == (JobStatus.COMPLETED, 2, 1)
    first, chat, third = client.iter_results(job_id)
    assert first.error is None
    assert third.error is None
    assert first.usage.completion_tokens == third.usage.completion_tokens == 8
    assert chat.error is not None
    assert chat.error.type == "no_chat_template"
    assert "has no chat template: set GENQ_CHAT_TEMPLATE on the workers" in chat.error.message
