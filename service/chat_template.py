"""Render chat messages into the model's prompt with the model's own chat template.

The service sends TGI a rendered prompt string (``text_generation``), so the
prompt it fits to ``max_input_tokens`` is exactly the text the server
tokenises, and the trainer renders training examples with the same template:
serving and training cannot drift apart. The tokenizer is loaded lazily, from
a local directory only.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from candor.errors import InvalidInputError, NotFoundError


class PromptRenderer:
    def __init__(self, tokenizer_path: str | Path):
        self.tokenizer_path = Path(tokenizer_path)
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            with self._lock:
                if self._tokenizer is None:
                    self._tokenizer = self._load()
        return self._tokenizer

    def _load(self) -> Any:
        if not (self.tokenizer_path / "tokenizer_config.json").is_file():
            raise NotFoundError(
                f"no tokenizer at {self.tokenizer_path}: run `candor model prepare`, or set "
                "CANDOR_TOKENIZER_PATH to a local model or tokenizer directory"
            )
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_path, local_files_only=True)
        if not getattr(tokenizer, "chat_template", None):
            raise NotFoundError(f"the tokenizer at {self.tokenizer_path} has no chat template")
        return tokenizer

    def render(self, messages: Sequence[dict[str, str]]) -> str:
        """The prompt text, ending with the assistant turn's opening (add_generation_prompt)."""
        checked = _check_messages(messages)
        return self.tokenizer.apply_chat_template(checked, tokenize=False, add_generation_prompt=True)

    def count_tokens(self, messages: Sequence[dict[str, str]]) -> int:
        """Tokens the server will count for ``render(messages)`` (TGI adds special tokens as here)."""
        return self.count_text_tokens(self.render(messages))

    def count_text_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=True)["input_ids"])


def _check_messages(messages: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    if not messages:
        raise InvalidInputError("no messages to render")
    checked = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise InvalidInputError(f"message {i} must be a dict with string 'role' and 'content'")
        checked.append({"role": m["role"], "content": m["content"]})
    return checked
