"""The text towers' tokenizer: open_clip's tokens, with its word cache bounded for a long-running node."""

from __future__ import annotations

import numpy as np
import open_clip
import torch

from ddclip_core._tokenizer import BoundedTokenizer
from tests.conftest import make_tiny


def test_tokens_are_open_clips_and_the_word_cache_stays_bounded(monkeypatch):
    monkeypatch.setattr(BoundedTokenizer, "MAX_WORDS", 50)
    tokenizer, reference = BoundedTokenizer(77), open_clip.SimpleTokenizer(context_length=77)
    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    queries = [" ".join("".join(rng.choice(letters, 6)) for _ in range(4)) for _ in range(100)]  # 400 words
    queries += ["the red mug", "something to sit on", "the red mug"]
    for query in queries:
        assert torch.equal(tokenizer([query]), reference([query]))
        assert len(tokenizer.cache) <= 50  # before: every word ever seen (the reference now holds 400+)
    assert len(reference.cache) > 400
    assert tokenizer.cache["<start_of_text>"] == "<start_of_text>"  # the special tokens stay


def test_models_use_it():
    model = make_tiny()
    assert isinstance(model.tokenizer, BoundedTokenizer)
    assert model.tokenizer.context_length == model.config.clip_cfg["text_cfg"].get("context_length", 77)
