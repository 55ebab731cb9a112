"""Consumes raw prompts and a model's tokenizer, produces the exact texts the model is fed: as
they are, through a ``str → str`` function, or through the tokenizer's own chat template (``chat_template=True``,
the way instruct models are profiled and prompted in the paper).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["ChatTemplate", "format_prompts"]

ChatTemplate = bool | Callable[[str], str] | None
"""``None``/``False``: the prompts as given; ``True``: ``tokenizer.apply_chat_template`` with one user turn and the
generation prompt; a function: applied to each prompt."""


def format_prompts(tokenizer: object, prompts: Sequence[str], chat_template: ChatTemplate = None) -> list[str]:
    """The texts fed to the model for ``prompts`` under ``chat_template`` (see :data:`ChatTemplate`).

    Raises:
        ValueError: ``chat_template=True`` with a tokenizer that has no chat template.
    """
    if chat_template is None or chat_template is False:
        return list(prompts)
    if chat_template is True:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("chat_template=True needs a tokenizer with a chat template (tokenizer.chat_template is "
                             "empty); pass chat_template=<a str → str function> or None")
        return [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                              add_generation_prompt=True) for p in prompts]
    if callable(chat_template):
        return [chat_template(p) for p in prompts]
    raise ValueError(f"chat_template must be None, True or a str → str function, got {chat_template!r}")
