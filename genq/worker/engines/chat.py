"""Chat items: a conversation rendered to the prompt text the model continues.

Every engine with a tokenizer renders through :func:`render_with_tokenizer` (the tokenizer's
``apply_chat_template``), so the configured GENQ_CHAT_TEMPLATE and the model's own template are
chosen, and their failures worded, in one place. Nothing heavy is imported here: the runner
imports the errors, and the tokenizer comes from the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from genq.schema import ChatMessage

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# What the no-template error suggests: plain "role: content" lines, then the assistant's turn.
EXAMPLE_TEMPLATE = (
    "{% for m in messages %}{{ m.role }}: {{ m.content }}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


class ChatTemplateError(Exception):
    """A chat item that cannot be rendered: the template failed on its conversation."""


class NoChatTemplate(ChatTemplateError):
    """A chat item, and neither the model nor GENQ_CHAT_TEMPLATE provides a chat template."""


def message_dicts(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    """The conversation as chat templates read it (``name`` only where a message has one)."""
    return [
        {"role": m.role, "content": m.content, **({"name": m.name} if m.name is not None else {})}
        for m in messages
    ]


def render_with_tokenizer(
    tokenizer: PreTrainedTokenizerBase,
    model_name: str,
    messages: Sequence[ChatMessage],
    template: str | None,
) -> str:
    """``messages`` rendered for generation (the assistant's turn opened) with ``template``
    (GENQ_CHAT_TEMPLATE, which wins) or else the tokenizer's own chat template.

    Raises :class:`NoChatTemplate` when there is neither, and :class:`ChatTemplateError` when
    the template fails on this conversation (a Jinja error, ``raise_exception`` in it, ...).
    """
    if template is None and not tokenizer.chat_template:
        raise NoChatTemplate(
            f"the model {model_name} has no chat template: set GENQ_CHAT_TEMPLATE on the "
            f"workers to a Jinja chat template (for example {EXAMPLE_TEMPLATE}), or add a "
            "chat_template to the model's tokenizer_config.json"
        )
    source = (
        "the chat template in GENQ_CHAT_TEMPLATE"
        if template is not None
        else f"the chat template of the model {model_name}"
    )
    try:
        text = tokenizer.apply_chat_template(
            message_dicts(messages),  # type: ignore[arg-type]
            chat_template=template,
            tokenize=False,
            add_generation_prompt=True,
        )
    except Exception as e:  # the template is code: whatever it raises ends this item only
        raise ChatTemplateError(
            f"{source} failed to render this conversation "
            f"({type(e).__name__}: {e}); fix the template or the messages"
        ) from e
    if not isinstance(text, str):
        raise ChatTemplateError(f"{source} rendered {type(text).__name__}, not text")
    return text


def check_template(template: str) -> None:
    """Raise :class:`ChatTemplateError` if ``template`` is not valid Jinja (a worker checks
    GENQ_CHAT_TEMPLATE at start, rather than failing every chat item on it)."""
    try:
        from jinja2 import TemplateSyntaxError
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as e:
        raise ChatTemplateError("GENQ_CHAT_TEMPLATE needs Jinja: pip install 'jinja2>=3.1'") from e
    try:
        ImmutableSandboxedEnvironment().parse(template)
    except TemplateSyntaxError as e:
        raise ChatTemplateError(
            f"GENQ_CHAT_TEMPLATE is not a valid Jinja template (line {e.lineno}: {e.message})"
        ) from e
