"""EnrolledObjects: named objects mirrored into a bank and kept in their own file across restarts."""

from __future__ import annotations

import numpy as np
import pytest

from ddclip_core import EmbeddingBank
from ddclip_core.enrolled import EnrolledObjects


def unit(seed: int, dim: int = 8) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return vector / np.linalg.norm(vector)


def test_enrolled_names_survive_a_reload_and_join_the_bank(tmp_path):
    bank = EmbeddingBank(8, weights_id="w")
    bank.add(unit(0)[None], [{"id": "objaverse-1", "name": "chair"}], weights_id="w")
    enrolled = EnrolledObjects(8, "w", tmp_path)
    assert enrolled.add(bank, unit(1), "Ana's mug", "mug") is bank
    enrolled.add(bank, unit(2), "Ana's mug", "mug")  # enrolled again: the new views replace the old
    made = enrolled.add(None, unit(3), "red ball")  # no bank yet: one is made
    assert len(bank) == 2 and len(made) == 1

    again = EnrolledObjects(8, "w", tmp_path)  # a restart
    assert len(again) == 2 and "enrolled:Ana's mug" in again
    restored = again.into(EmbeddingBank.load(bank.save(tmp_path / "bank")))
    best = restored.search(unit(2), k=1)[0][0]
    assert (best.id, best.name, best.metadata["category"]) == ("enrolled:Ana's mug", "Ana's mug", "mug")
    assert best.score == pytest.approx(1.0, abs=1e-5)
    assert len(restored) == 3 and len(again.into(None)) == 2
    assert len(again.into(EmbeddingBank(8, weights_id="w"))._segments) == 1  # every name in one add

    assert again.remove(restored, ["enrolled:red ball", "objaverse-1"]) == 1  # only enrolled ids
    assert "enrolled:red ball" not in restored and "objaverse-1" in restored
    assert len(EnrolledObjects(8, "w", tmp_path)) == 1  # the removal was saved at once


def test_enrolled_objects_of_other_weights_are_refused(tmp_path):
    EnrolledObjects(8, "w", tmp_path).add(None, unit(1), "mug")
    with pytest.raises(ValueError, match="made with weights 'w', not 'other'"):
        EnrolledObjects(8, "other", tmp_path)
    assert len(EnrolledObjects(8, None, None)) == 0  # no folder: nothing persisted
