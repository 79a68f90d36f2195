"""Queries that combine a model and a bank: text / views / object -> objects, and concept mixing.

Every query through a model checks that the bank was built with the same weights.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .bank import BankError, EmbeddingBank, Match


def check_compatible(bank: EmbeddingBank, model: Any) -> None:
    """Refuse a bank whose embeddings come from other weights than ``model`` (its aliases count)."""
    bank.check_weights(model, what="queries")


def search_text(bank: EmbeddingBank, model: Any, texts: str | list[str], k: int = 10) -> list[list[Match]]:
    check_compatible(bank, model)
    return bank.search(model.encode_text(texts), k)


def search_views(bank: EmbeddingBank, model: Any, views: Any, k: int = 10, **encode: Any) -> list[list[Match]]:
    """Objects whose embeddings are closest to the shape embedding of ``views`` (any encode_views input)."""
    check_compatible(bank, model)
    return bank.search(model.encode_views(views, **encode), k)


def similar(bank: EmbeddingBank, item_id: str, k: int = 10) -> list[Match]:
    """The k objects most similar to a bank object, itself excluded."""
    (matches,) = bank.search(bank.embedding(item_id), k + 1)
    return [m for m in matches if m.id != item_id][:k]


def mix(bank: EmbeddingBank, first: Any, second: Any, k: int = 10, model: Any = None) -> list[Match]:
    """Concept mixing of two concepts, each a bank id, a text (needs ``model``) or an embedding.

    Bank objects named as concepts are excluded from the answer.
    """
    vectors, exclude = [], []
    for concept in (first, second):
        if isinstance(concept, str) and concept in bank:
            vectors.append(bank.embedding(concept))
            exclude.append(concept)
        elif isinstance(concept, str):
            if model is None:
                raise BankError(f"{concept!r} is not a bank id; texts need a model")
            check_compatible(bank, model)
            vectors.append(model.encode_text(concept)[0].cpu().numpy())
        else:
            vectors.append(np.asarray(concept, dtype=np.float32).reshape(-1))
    return bank.mix(vectors[0], vectors[1], k, exclude=exclude)
