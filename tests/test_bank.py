"""EmbeddingBank with real FAISS, real parquet/npy/h5 files in the published layouts."""

from __future__ import annotations

import gzip
import json

import h5py
import numpy as np
import pytest

from ddclip_core.bank import BankError, BankMismatchError, EmbeddingBank
from ddclip_core.objaverse import PUBLISHED_WEIGHTS_ID


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def clustered(n: int, dim: int, seed: int = 0, clusters: int = 50) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    return unit(centres[rng.integers(0, clusters, n)] + 0.6 * rng.normal(size=(n, dim)))


@pytest.fixture
def small_bank() -> EmbeddingBank:
    bank = EmbeddingBank(8, weights_id="w-A")
    vectors = np.eye(8, dtype=np.float32)
    names = ["mug", "chair", "couch", "duck", "teddy bear", "ball", "lamp", "table"]
    colours = ["blue", "red"]
    records = [{"id": f"obj{i}", "name": n, "category": n, "colour": colours[i % 2]} for i, n in enumerate(names)]
    bank.add(vectors, records)
    return bank


def test_search_returns_ranked_matches_with_metadata(small_bank):
    query = unit(np.array([0.1, 0.9, 0.3, 0, 0, 0, 0, 0]))
    (matches,) = small_bank.search(query, k=3)
    assert [m.id for m in matches] == ["obj1", "obj2", "obj0"]
    assert matches[0].name == "chair" and matches[0].metadata["colour"] == "red"
    assert matches[0].score == pytest.approx(float(query[1]), abs=1e-6)
    assert len(small_bank) == 8 and "obj3" in small_bank
    assert len(small_bank.search(np.stack([query, query]), k=20)) == 2  # k > rows is fine


def test_save_load_round_trip_memory_mapped(small_bank, tmp_path):
    small_bank.save(tmp_path / "bank")
    manifest = json.loads((tmp_path / "bank" / "bank.json").read_text())
    assert manifest["format"] == "ddclip-bank" and manifest["version"] == 2 and manifest["weights_id"] == "w-A"
    loaded = EmbeddingBank.load(tmp_path / "bank")
    assert isinstance(loaded._segments[0], np.memmap)
    assert len(loaded) == 8 and loaded.weights_id == "w-A"
    query = unit(np.arange(8, dtype=np.float32))
    assert [m.to_dict() for m in loaded.search(query, 8)[0]] == [m.to_dict() for m in small_bank.search(query, 8)[0]]
    np.testing.assert_array_equal(loaded.embedding("obj4"), small_bank.embedding("obj4"))


def test_incremental_add_and_remove_survive_save(small_bank, tmp_path):
    small_bank.save(tmp_path / "bank")
    bank = EmbeddingBank.load(tmp_path / "bank")
    new = unit(np.array([0, 0, 0, 0, 0, 0, 1, 1], dtype=np.float32))
    assert bank.add(new, [{"id": "robot-mug", "name": "my mug", "source": "enrolled"}]) == ["robot-mug"]
    assert bank.search(new, 1)[0][0].id == "robot-mug"
    bank.remove(["obj6"])
    assert "obj6" not in bank and len(bank) == 8
    assert "obj6" not in [m.id for m in bank.search(new, 9)[0]]
    with pytest.raises(BankError, match="already in the bank"):
        bank.add(new, [{"id": "robot-mug"}])
    with pytest.raises(BankError, match=r"unknown ids: \['nope'\]"):
        bank.remove(["nope"])
    bank.save(tmp_path / "bank")  # over the mapped files it was loaded from
    again = EmbeddingBank.load(tmp_path / "bank")
    assert len(again) == 8 and "obj6" not in again and again.metadata("robot-mug")["source"] == "enrolled"
    bank.add(unit(np.ones(8)), [{"id": "obj6", "name": "lamp again"}])  # a removed id can come back
    assert bank.metadata("obj6")["name"] == "lamp again"


def test_rows_added_one_at_a_time_keep_few_segments_and_search_as_one(tmp_path):
    """Enrolments add a row each; every search walks every segment (before: 3001 segments after 3000
    re-enrolments, each search 60 times slower). A loaded bank's mapped file is never copied."""
    vectors = clustered(300, 16, seed=3)
    records = [{"id": f"r{i}", "name": f"n{i}"} for i in range(300)]
    base = EmbeddingBank(16, weights_id="w")
    base.add(vectors[:100], records[:100])
    loaded = EmbeddingBank.load(base.save(tmp_path / "bank"))
    for i in range(100, 300):
        loaded.add(vectors[i : i + 1], records[i : i + 1])
        if i % 3 == 0:
            loaded.remove([f"r{i}"])
            loaded.add(vectors[i : i + 1], records[i : i + 1])  # re-enrolled
    assert isinstance(loaded._segments[0], np.memmap) and len(loaded._segments[0]) == 100
    assert len(loaded._segments) <= 2 + int(np.log2(300))
    whole = EmbeddingBank(16, weights_id="w")
    whole.add(vectors, records)
    queries = clustered(20, 16, seed=4)
    for got, expected in zip(loaded.search(queries, k=10), whole.search(queries, k=10), strict=True):
        assert [m.id for m in got] == [m.id for m in expected]
        np.testing.assert_allclose([m.score for m in got], [m.score for m in expected], atol=1e-6)
    np.testing.assert_array_equal(loaded.embedding("r250"), whole.embedding("r250"))


def test_bank_refuses_other_weights(small_bank, tmp_path):
    with pytest.raises(BankMismatchError, match="weights 'w-B'.*built with 'w-A'"):
        small_bank.add(unit(np.ones(8)), weights_id="w-B")
    small_bank.save(tmp_path / "bank")
    with pytest.raises(BankMismatchError, match="not comparable"):
        EmbeddingBank.load(tmp_path / "bank", weights_id="w-B")
    assert len(EmbeddingBank.load(tmp_path / "bank", weights_id="w-A")) == 8


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_approximate_index_agrees_with_exact(kind, tmp_path):
    bank = EmbeddingBank(64, weights_id="w")
    bank.add(clustered(20_000, 64))
    report = bank.build_index(kind)
    assert report["kind"] == kind and report["recall@10"] >= 0.95
    rng = np.random.default_rng(9)
    query = unit(bank.vectors()[rng.choice(20_000, 20)] + 0.05 * rng.normal(size=(20, 64)))
    approx, exact = bank.search(query, 10), bank.search(query, 10, exact=True)
    overlap = np.mean([len({m.id for m in a} & {m.id for m in e}) / 10 for a, e in zip(approx, exact, strict=True)])
    assert overlap >= 0.9  # 20 queries; the 0.95 bar is on the 500-query report above
    bank.save(tmp_path / kind)
    loaded = EmbeddingBank.load(tmp_path / kind)
    assert loaded.index_spec["kind"] == kind
    assert [m.id for m in loaded.search(query, 10)[0]] == [m.id for m in approx[0]]
    loaded.add(unit(np.ones(64)), [{"id": "new"}])  # the index grows with the bank
    assert loaded.search(unit(np.ones(64)), 1)[0][0].id == "new"


@pytest.mark.parametrize(
    ("kind", "params", "message"),
    [
        ("hnsw", {"m": 0}, "m must be an integer in [2, 256], got 0"),  # Faiss aborted the process
        ("hnsw", {"m": -5}, "m must be an integer in [2, 256], got -5"),  # Faiss allocated without bound
        ("hnsw", {"ef_search": 0}, "ef_search must be an integer in [1, 65536]"),
        # past a C int: OverflowError from faiss
        ("hnsw", {"ef_search": 3_000_000_000}, "ef_search must be an integer in [1, 65536], got 3000000000"),
        ("hnsw", {"m": 3_000_000_000}, "m must be an integer in [2, 256]"),
        ("hnsw", {"foo": 1}, "unknown hnsw index parameter(s) 'foo': hnsw takes m, ef_construction, ef_search"),
        ("flat", {"m": 8}, "unknown flat index parameter(s) 'm': flat takes none"),
        ("ivfpq", {"nlist": 0}, "nlist must be an integer in [1, 2147483647], got 0"),  # Faiss crashed (SIGSEGV)
        ("ivfpq", {"pq_m": 0}, "pq_m must be an integer in [1, 65536], got 0"),
        ("ivfpq", {"nprobe": -1}, "nprobe must be an integer in [1, 65536], got -1"),
        ("ivfpq", {"rerank": 0}, "rerank must be an integer in [1, 65536], got 0"),
        ("ivfpq", {"nlist": 5000}, "nlist (5000) must be at most the bank's 1000 rows"),
        ("ivfpq", {"pq_m": 1.5}, "pq_m must be an integer in [1, 65536], got 1.5"),
    ],
)
def test_bad_index_parameters_are_refused_before_faiss_sees_them(kind, params, message):
    bank = EmbeddingBank(16, weights_id="w")
    bank.add(clustered(1000, 16))
    with pytest.raises(ValueError) as error:
        bank.build_index(kind, **params)
    assert message in str(error.value)
    assert bank.index_spec == {"kind": "flat"} and len(bank.search(bank.vectors()[:1], 3)[0]) == 3  # unchanged


def test_concept_mixing_finds_the_object_between_two(small_bank):
    mug, ball = small_bank.embedding("obj0"), small_bank.embedding("obj5")
    small_bank.add(unit(mug + ball), [{"id": "mug-shaped-ball", "name": "mug-shaped ball"}])
    small_bank.add(unit(3 * mug + 0.2 * ball), [{"id": "mostly-mug"}])
    mixed = small_bank.mix(mug, ball, k=3, exclude=["obj0", "obj5"])
    assert mixed[0].id == "mug-shaped-ball"
    assert mixed[0].score == pytest.approx(float(unit(mug + ball) @ mug), abs=1e-5)


def _write_objaverse(folder, n=300, dim=512, seed=0):
    vectors = clustered(n, dim, seed=seed)
    uids = [f"{i:032x}" for i in range(n)]
    order = np.random.default_rng(seed).permutation(n)  # uid map is not in row order
    with h5py.File(folder / "shape_emb_objaverse.h5", "w") as handle:
        handle.create_dataset("shape_feat", data=(vectors * 3).astype(np.float16))  # unnormalised, fp16
    (folder / "shape_emb_objaverse_model_to_idx.json").write_text(json.dumps({uids[i]: int(i) for i in order}))
    with (folder / "lvis.csv").open("w") as handle:
        handle.write("class_idx,name,uid\n")
        for i in range(0, n, 3):
            handle.write(f"{i % 7},{['chair', 'mug', 'duck', 'lamp', 'sofa', 'ball', 'shoe'][i % 7]},{uids[i]}\n")
    return vectors, uids


def test_objaverse_embeddings_as_released_with_names(tmp_path):
    vectors, uids = _write_objaverse(tmp_path)
    h5, uid_map = tmp_path / "shape_emb_objaverse.h5", tmp_path / "shape_emb_objaverse_model_to_idx.json"
    bank = EmbeddingBank.from_objaverse(h5, uid_map, names=tmp_path / "lvis.csv")
    assert len(bank) == 300 and bank.dim == 512 and bank.weights_id == PUBLISHED_WEIGHTS_ID
    (best,) = bank.search(vectors[3], k=1)[0]
    assert best.id == uids[3] and best.score == pytest.approx(1.0, abs=2e-3)
    assert best.metadata["name"] == "lamp" and best.metadata["category"] == "lamp" and best.metadata["class_idx"] == "3"
    assert best.metadata["source"] == "objaverse"
    assert "name" not in bank.metadata(uids[1])  # not in the names table: the uid is all we have


def write_lvis_and_cap3d(folder, uids):
    """``lvis-annotations.json.gz`` (category -> uids) and Cap3D's csv (no header: uid, caption), as released."""
    with gzip.open(folder / "lvis-annotations.json.gz", "wt") as handle:
        json.dump({"mug": [uids[0], uids[5]], "armchair": [uids[1]]}, handle)
    long = "a very long caption " * 10
    rows = [f"{uids[0]},a red ceramic mug with a handle", f'{uids[2]},"a wooden chair, painted blue"']
    rows.append(f"{uids[3]},{long}")
    rows.append(f"{'f' * 64},an Objaverse-XL object (not in the release)")
    (folder / "Cap3D_automated_Objaverse_full.csv").write_text("\n".join(rows) + "\n")
    return folder / "lvis-annotations.json.gz", folder / "Cap3D_automated_Objaverse_full.csv"


def test_objaverse_names_from_lvis_annotations_and_cap3d_captions(tmp_path):
    vectors, uids = _write_objaverse(tmp_path, n=20)
    lvis, cap3d = write_lvis_and_cap3d(tmp_path, uids)
    h5, uid_map = tmp_path / "shape_emb_objaverse.h5", tmp_path / "shape_emb_objaverse_model_to_idx.json"
    bank = EmbeddingBank.from_objaverse(h5, uid_map, names=lvis, captions=cap3d)
    mug = bank.metadata(uids[0])
    assert mug["name"] == "a red ceramic mug with a handle" and mug["category"] == "mug"
    assert bank.metadata(uids[1])["name"] == "armchair"  # a category and no caption
    assert bank.metadata(uids[2])["name"] == "a wooden chair, painted blue" and "category" not in bank.metadata(uids[2])
    long = bank.metadata(uids[3])
    assert len(long["name"]) == 120 and long["name"].endswith("…") and len(long["caption"]) == 199  # stripped
    assert bank.search(vectors[0], k=1)[0][0].name == "a red ceramic mug with a handle"
    assert "name" not in bank.metadata(uids[4])  # neither: the uid is all we have
    (tmp_path / "bad.csv").write_text("uid,caption\nnot-a-uid,x\n")
    with pytest.raises(ValueError, match="no 'uid,caption' rows with Objaverse uids"):
        EmbeddingBank.from_objaverse(h5, uid_map, captions=tmp_path / "bad.csv")


def test_objaverse_bad_files(tmp_path):
    _write_objaverse(tmp_path, n=20)
    h5, uid_map = tmp_path / "shape_emb_objaverse.h5", tmp_path / "shape_emb_objaverse_model_to_idx.json"
    good_map = uid_map.read_text()
    with pytest.raises(FileNotFoundError, match="names table not found"):
        EmbeddingBank.from_objaverse(h5, uid_map, names=tmp_path / "nope.csv")
    with pytest.raises(FileNotFoundError, match="file not found"):
        EmbeddingBank.from_objaverse(tmp_path / "missing.h5", uid_map)
    mapping = json.loads(uid_map.read_text())
    mapping.pop(next(iter(mapping)))
    uid_map.write_text(json.dumps(mapping))
    with pytest.raises(ValueError, match="1 of 20 rows have no uid"):
        EmbeddingBank.from_objaverse(h5, uid_map)
    uid_map.write_text(json.dumps({"x": 99}))
    with pytest.raises(ValueError, match="outside 0..19"):
        EmbeddingBank.from_objaverse(h5, uid_map)
    with h5py.File(tmp_path / "other.h5", "w") as handle:
        handle.create_dataset("feat", data=np.zeros((2, 4)))
    uid_map.write_text(good_map)
    with pytest.raises(ValueError, match="no dataset 'shape_feat'"):
        EmbeddingBank.from_objaverse(tmp_path / "other.h5", uid_map)
    with h5py.File(tmp_path / "group.h5", "w") as handle:
        handle.create_group("shape_feat")
    with pytest.raises(ValueError, match="'shape_feat' is a group"):
        EmbeddingBank.from_objaverse(tmp_path / "group.h5", uid_map)
    with h5py.File(tmp_path / "ints.h5", "w") as handle:
        handle.create_dataset("shape_feat", data=np.ones((20, 8), dtype=np.int64))
    with pytest.raises(ValueError, match="must hold floating-point embeddings, got int64"):
        EmbeddingBank.from_objaverse(tmp_path / "ints.h5", uid_map)


def test_objaverse_uid_maps_and_tables_that_are_not_what_they_claim_are_refused_by_name(tmp_path):
    _write_objaverse(tmp_path, n=20)
    h5, uid_map = tmp_path / "shape_emb_objaverse.h5", tmp_path / "shape_emb_objaverse_model_to_idx.json"
    mapping = json.loads(uid_map.read_text())
    first = next(iter(mapping))
    for bad, message in [
        ({**mapping, first: True}, "maps to row True"),  # JSON true is a Python int: was row 1
        ({**{k: v for k, v in mapping.items() if k != first}, "": mapping[first]}, "an empty uid maps to row"),
    ]:
        uid_map.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=message):
            EmbeddingBank.from_objaverse(h5, uid_map)
    uid_map.write_bytes(b'{"\xff\xfe": 0}')
    with pytest.raises(ValueError, match=f"{uid_map.name}: not UTF-8 text"):
        EmbeddingBank.from_objaverse(h5, uid_map)
    uid_map.write_text(json.dumps(mapping))
    (tmp_path / "names.csv").write_bytes(b"uid,name\n\xff,x\n")
    with pytest.raises(ValueError, match="names.csv: not UTF-8 text"):
        EmbeddingBank.from_objaverse(h5, uid_map, names=tmp_path / "names.csv")
    (tmp_path / "names.parquet").write_text("uid,name\n")
    with pytest.raises(ValueError, match="names.parquet: not a readable parquet table"):
        EmbeddingBank.from_objaverse(h5, uid_map, names=tmp_path / "names.parquet")


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (np.zeros((0, 8)), r"Q >= 1"),
        (np.ones(5), "query dimension 5 does not match the bank's 8"),
        (np.full(8, np.nan), "NaN"),
        (np.zeros(8), "all zeros"),
    ],
)
def test_bad_queries(small_bank, query, message):
    with pytest.raises(BankError, match=message):
        small_bank.search(query)


def test_bad_banks_and_arguments(small_bank, tmp_path):
    with pytest.raises(BankError, match="k must be >= 1"):
        small_bank.search(np.ones(8), k=0)
    with pytest.raises(BankError, match="2 embeddings but 1 metadata records"):
        small_bank.add(np.ones((2, 8)), [{}])
    with pytest.raises(FileNotFoundError, match="not a ddclip bank"):
        EmbeddingBank.load(tmp_path)
    small_bank.save(tmp_path / "bank")
    manifest_path = tmp_path / "bank" / "bank.json"
    manifest = json.loads(manifest_path.read_text())
    vectors = tmp_path / "bank" / manifest["files"]["vectors"]["path"]

    def replace_vectors(array: np.ndarray) -> None:  # and record the new size, so only the contents are wrong
        np.save(vectors, array)
        manifest["files"]["vectors"]["bytes"] = vectors.stat().st_size
        manifest_path.write_text(json.dumps(manifest))

    replace_vectors(np.ones((3, 8), np.float32))
    with pytest.raises(BankError, match="corrupt bank: 3 vectors, 8 metadata rows"):
        EmbeddingBank.load(tmp_path / "bank")
    replace_vectors(np.ones((8, 4), np.float32))
    with pytest.raises(BankError, match=r"expected float32 \(N, 8\)"):
        EmbeddingBank.load(tmp_path / "bank")
    with pytest.raises(ValueError, match="unknown index kind"):
        small_bank.build_index("lsh")
    with pytest.raises(ValueError, match="at least 1000 rows"):
        small_bank.build_index("ivfpq")


def test_gpu_faiss_answers_only_the_k_it_can_select(monkeypatch):
    """faiss's GPU k-selection takes k <= 2048: a larger k (or one grown by removed rows) is answered on
    the CPU, not refused (a GPU faiss is simulated here: none is installed)."""
    import faiss

    from ddclip_core import _faiss_search

    calls = []

    def knn_gpu(resources, queries, block, k, metric):
        calls.append(k)
        return _faiss_search._topk(queries @ block.T, k)

    monkeypatch.setattr(_faiss_search, "gpu_available", lambda: True)
    monkeypatch.setattr(faiss, "StandardGpuResources", object, raising=False)
    monkeypatch.setattr(faiss, "knn_gpu", knn_gpu, raising=False)
    monkeypatch.setitem(_faiss_search._gpu, "res", object())
    vectors = clustered(3000, 16)
    query = vectors[:2]
    for k in (10, 2048, 2049, 3000):
        scores, rows = _faiss_search.exact_search([vectors], query, k)
        expected = np.sort(query @ vectors.T, axis=1)[:, ::-1][:, :k]
        np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
        assert rows.shape == (2, k)
    assert calls == [10, 2048]
