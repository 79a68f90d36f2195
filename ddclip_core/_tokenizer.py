"""CLIP's BPE tokenizer (open_clip's), with its cache of split words bounded."""

from __future__ import annotations

from typing import Any

import open_clip


class BoundedTokenizer(open_clip.SimpleTokenizer):
    """open_clip's SimpleTokenizer keeps every distinct word it has split in ``cache`` and never lets one
    go: a node answering free-text queries for months would grow it without bound (~200 B a word). This
    one starts it afresh once it holds MAX_WORDS; a word split again gives the same tokens."""

    MAX_WORDS = 20_000

    def __init__(self, context_length: int) -> None:
        super().__init__(context_length=context_length)
        self._special = dict(self.cache)  # the special tokens it starts with

    def bpe(self, token: str) -> str:
        if len(self.cache) >= self.MAX_WORDS:
            self.cache = dict(self._special)
        return super().bpe(token)


def tokenizer_for(config: Any) -> BoundedTokenizer:
    """The tokenizer of a model's text tower (``DuoduoConfig``: its context length)."""
    return BoundedTokenizer(int(config.clip_cfg["text_cfg"].get("context_length", 77)))
