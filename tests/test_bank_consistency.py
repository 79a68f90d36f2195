"""A bank whose edit fails stays as it was: ids, vectors, metadata and index in step; and a bank folder's
manifest cannot point a save or a load at files outside the folder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ddclip_core.bank import BankError, EmbeddingBank

DIM = 16


def _vectors(count: int, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(count, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_an_add_whose_metadata_does_not_fit_changes_nothing(kind):
    bank = EmbeddingBank(DIM)
    vectors = _vectors(3)
    bank.add(vectors[:1], [{"id": "mug", "views": 12}])
    bank.build_index(kind, check_recall=False)
    with pytest.raises(BankError, match="metadata that does not fit"):
        bank.add(vectors[1:2], [{"id": "duck", "views": "twelve"}])  # text where the bank has numbers
    assert "duck" not in bank and len(bank) == 1  # before: duck was in, without metadata or index row
    bank.add(vectors[2:], [{"id": "teddy", "name": "teddy bear"}])
    (match,) = bank.search(vectors[2], k=1)[0]
    assert (match.id, bank.metadata("teddy")["name"]) == ("teddy", "teddy bear")  # before: "duck" / its row


def test_a_compaction_that_cannot_rebuild_its_index_leaves_the_bank_as_it_was(tmp_path):
    vectors = _vectors(1000, seed=1)
    bank = EmbeddingBank(DIM)
    bank.add(vectors, [{"id": f"o{i}"} for i in range(1000)])
    bank.build_index("ivfpq", pq_m=4, check_recall=False)
    bank.remove(["o0"])
    with pytest.raises(ValueError, match="ivfpq needs at least 1000 rows"):
        bank.save(tmp_path / "bank")  # 999 rows left: too few to train the index again
    for i in (10, 500, 999):  # before: the old index answered with the compacted rows' ids
        assert bank.search(vectors[i], k=1)[0][0].id == f"o{i}"


def test_a_manifest_naming_files_outside_its_folder_is_refused(tmp_path):
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    bank = EmbeddingBank(DIM)
    bank.add(_vectors(2), [{"id": "a"}, {"id": "b"}])
    bank.save(tmp_path / "bank")
    manifest_path = tmp_path / "bank" / "bank.json"
    manifest = json.loads(manifest_path.read_text())
    for name in (str(outside), "../precious.txt"):
        manifest["files"]["index"] = {"path": name}
        manifest_path.write_text(json.dumps(manifest))
        with pytest.raises(BankError, match="the index file must be a file name in the bank's folder"):
            EmbeddingBank.load(tmp_path / "bank")
        bank.save(tmp_path / "bank")  # a save over it: before, it deleted the file the manifest named
        assert outside.read_text() == "keep me"
        manifest = json.loads(manifest_path.read_text())
