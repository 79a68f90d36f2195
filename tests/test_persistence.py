"""Persisted files are written atomically and checked on load: banks re-saved under a reader that maps
them, saves killed half-way, and truncated or foreign enrolled-name files (real files). The object
memory's database has its own tests (test_memory.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ddclip_core import EmbeddingBank
from ddclip_core.enrolled import EnrolledObjects


def bank_of(rows: int, value: float, dim: int = 64) -> EmbeddingBank:
    bank = EmbeddingBank(dim, weights_id="w")
    vectors = np.full((rows, dim), value, np.float32) + np.eye(rows, dim, dtype=np.float32)
    bank.add(vectors, [{"id": f"{value:g}-{i}", "name": f"object {i}"} for i in range(rows)])
    return bank


def test_resaving_a_bank_never_pulls_the_mapped_file_from_under_a_reader(tmp_path):
    """A node maps vectors; someone saves the bank again (smaller): the node reads on, no SIGBUS."""
    bank_of(20_000, 0.5).save(tmp_path / "bank")
    reader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, numpy as np\n"
            "from ddclip_core import EmbeddingBank\n"
            f"bank = EmbeddingBank.load({str(tmp_path / 'bank')!r})\n"
            "print('mapped', flush=True)\n"
            "sys.stdin.readline()\n"
            "vectors = np.asarray(bank._segments[0])\n"
            "print(len(bank), float(vectors[-1].sum()), bank.metadata('0.5-19999')['name'].split()[-1], flush=True)\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert reader.stdout.readline().strip() == "mapped"
    bank_of(10, 2.0).save(tmp_path / "bank")  # a new generation, while the reader maps the old
    output, _ = reader.communicate("go\n", timeout=120)
    assert reader.returncode == 0, f"the reader died with {reader.returncode} (SIGBUS is {-signal.SIGBUS})"
    count, total, best = output.split()
    assert (int(count), best) == (20_000, "19999") and float(total) == pytest.approx(8.0)  # 64 x 0.125
    assert len(EmbeddingBank.load(tmp_path / "bank")) == 10  # a new reader sees the new bank
    data_files = sorted(p.name.split("-")[0] for p in (tmp_path / "bank").iterdir())
    assert data_files == ["bank.json", "metadata", "vectors"]  # the old generation is gone from the folder


def test_a_save_killed_half_way_leaves_a_bank_that_loads_whole(tmp_path):
    """SIGKILL a process that saves the bank in a loop, alternating two contents: whatever generation
    the folder holds afterwards loads, and its vectors and metadata belong together."""
    bank_of(3, 2.0).save(tmp_path / "bank")
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from tests.test_persistence import bank_of\n"
            "banks = [bank_of(5000, 1.0), bank_of(7000, 3.0)]\n"
            "print('saving', flush=True)\n"
            "i = 0\n"
            "while True:\n"
            f"    banks[i % 2].save({str(tmp_path / 'bank')!r}); i += 1\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout.readline().strip() == "saving"
    for delay in (0.3, 0.45, 0.6):
        time.sleep(delay)
        bank = EmbeddingBank.load(tmp_path / "bank")  # also while the writer writes
        _check_whole(bank)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    _check_whole(EmbeddingBank.load(tmp_path / "bank"))
    # The killed save's files go with the next save (before: a copy of the vectors per kill, forever);
    # a temporary file goes once it is old enough to be a dead save's, a newer generation is left alone.
    folder = tmp_path / "bank"
    killed_tmp = [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]  # recent: kept
    stale_tmp, recent_tmp = folder / ".vectors-x.npy.0a1b2c.tmp", folder / ".bank.json.3d4e5f.tmp"
    for path in (
        stale_tmp,
        recent_tmp,
        folder / "vectors-20000101T000000-aaaaaa.npy",
        folder / "vectors-29990101T000000-bbbbbb.npy",
    ):
        path.write_bytes(b"x")
    os.utime(stale_tmp, (time.time() - 2 * 3600, time.time() - 2 * 3600))
    bank_of(3, 2.0).save(folder)
    left = sorted(p.name for p in folder.iterdir())
    newer = "vectors-29990101T000000-bbbbbb.npy"
    assert left == sorted([recent_tmp.name, *killed_tmp, newer, "bank.json", *_current(folder)])


def _current(folder) -> list[str]:
    return [entry["path"] for entry in json.loads((folder / "bank.json").read_text())["files"].values()]


def test_saved_files_get_the_umask_mode_and_keep_one_given_to_them(tmp_path):
    """Before: every atomically written file was 0600 (mkstemp's), whatever the umask: a bank built by root
    (Docker) could not be read by the node's user."""
    old = os.umask(0o022)
    try:
        folder = bank_of(3, 2.0).save(tmp_path / "bank")
        assert {p.name: oct(p.stat().st_mode & 0o777) for p in folder.iterdir()} == dict.fromkeys(
            ["bank.json", *_current(folder)], "0o644"
        )
        (folder / "bank.json").chmod(0o640)
        bank_of(3, 2.0).save(folder)
        assert oct((folder / "bank.json").stat().st_mode & 0o777) == "0o640"
    finally:
        os.umask(old)


def _check_whole(bank: EmbeddingBank) -> None:
    """The bank is one of the saved ones, its vectors and its metadata from the same save."""
    value = {3: 2.0, 5000: 1.0, 7000: 3.0}[len(bank)]
    last = len(bank) - 1
    expected = np.full(64, value, np.float32) + np.eye(len(bank), 64, dtype=np.float32)[last]
    np.testing.assert_allclose(bank.embedding(f"{value:g}-{last}"), expected / np.linalg.norm(expected), atol=1e-6)
    assert bank.metadata(f"{value:g}-{last}")["name"] == f"object {last}"


def test_a_bank_with_a_file_replaced_or_truncated_is_refused(tmp_path):
    bank_of(10, 1.0).save(tmp_path / "bank")
    manifest = json.loads((tmp_path / "bank" / "bank.json").read_text())
    vectors = tmp_path / "bank" / manifest["files"]["vectors"]["path"]
    vectors.write_bytes(vectors.read_bytes()[:-100])
    with pytest.raises(ValueError, match="bytes, the manifest says .* truncated or replaced"):
        EmbeddingBank.load(tmp_path / "bank")
    vectors.unlink()
    with pytest.raises(ValueError, match="the manifest names vectors-.*, which is missing"):
        EmbeddingBank.load(tmp_path / "bank")
    (tmp_path / "bank" / "bank.json").write_text('{"format": "ddclip-bank", ')
    with pytest.raises(ValueError, match="corrupt manifest"):
        EmbeddingBank.load(tmp_path / "bank")


@pytest.mark.parametrize("value", [np.nan, np.inf, 3.0])
@pytest.mark.parametrize("mmap", [True, False])
def test_a_bank_whose_vectors_file_holds_a_corrupt_row_is_refused_naming_it(tmp_path, value, mmap):
    # The file keeps its size, so only the rows can tell: NaN scores would otherwise rank first.
    bank_of(10, 1.0).save(tmp_path / "bank")
    manifest = json.loads((tmp_path / "bank" / "bank.json").read_text())
    path = tmp_path / "bank" / manifest["files"]["vectors"]["path"]
    vectors = np.load(path)
    vectors[7, 3] = value
    np.save(path, vectors)
    with pytest.raises(ValueError, match=r"row 7 \(id '1-7'\) is not a unit vector .* the file is corrupt"):
        EmbeddingBank.load(tmp_path / "bank", mmap=mmap)


def test_a_format_1_bank_is_still_read_and_saving_upgrades_it(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    vectors = np.eye(4, 8, dtype=np.float32)
    np.save(folder / "vectors.npy", vectors)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["a", "b", "c", "d"], "name": ["A", "B", "C", "D"]}), folder / "metadata.parquet")
    manifest = {
        "format": "ddclip-bank",
        "version": 1,
        "dim": 8,
        "rows": 4,
        "weights_id": "w",
        "index": {"kind": "flat"},
    }
    (folder / "bank.json").write_text(json.dumps(manifest))
    bank = EmbeddingBank.load(folder)
    assert bank.search(vectors[2], 1)[0][0].id == "c"
    bank.save(folder)
    assert json.loads((folder / "bank.json").read_text())["version"] == 2 and not (folder / "vectors.npy").exists()
    assert EmbeddingBank.load(folder).metadata("d")["name"] == "D"


def test_enrolled_names_refuse_truncated_and_foreign_files(tmp_path):
    enrolled = EnrolledObjects(4, "w", tmp_path)
    enrolled.add(None, np.eye(4)[1], "mug")
    data = (tmp_path / "enrolled.npz").read_bytes()
    (tmp_path / "enrolled.npz").write_bytes(data[:-30])
    with pytest.raises(ValueError, match="enrolled.npz: not a readable enrolled-names file"):
        EnrolledObjects(4, "w", tmp_path)
    np.savez(tmp_path / "enrolled.npz", embeddings=np.eye(4, dtype=np.float32)[:1], meta=np.array(json.dumps(
        {"dim": 4, "weights_id": "w", "objects": [{"id": "not-enrolled", "name": "x"}]}
    )))  # fmt: skip
    with pytest.raises(ValueError, match="corrupt record"):
        EnrolledObjects(4, "w", tmp_path)
    for meta, message in (
        ({"dim": 4, "weights_id": "w", "objects": 5}, "no list of objects"),  # before: TypeError, unnamed
        ({"dim": 4, "objects": [{"id": "enrolled:mug"}]}, "records no weights"),  # before: adopted as w's
    ):
        np.savez(tmp_path / "enrolled.npz", embeddings=np.eye(4, dtype=np.float32)[:1], meta=np.array(json.dumps(meta)))
        with pytest.raises(ValueError, match=f"enrolled.npz: .*{message}"):
            EnrolledObjects(4, "w", tmp_path)


def test_a_load_keeps_the_generation_it_opened_when_a_save_deletes_it_mid_read(tmp_path, monkeypatch):
    """A save lands while a node reads the bank (between opening the files and reading them): the
    reader still gets the whole generation it opened, index included, not an error or a mix."""
    from ddclip_core import _bank_files

    old = EmbeddingBank(64, weights_id="w")
    vectors = np.random.default_rng(0).standard_normal((300, 64)).astype(np.float32)
    old.add(vectors, [{"id": f"old-{i}", "name": f"object {i}"} for i in range(300)])
    old.build_index("hnsw", check_recall=False)
    old.save(tmp_path / "bank")
    opened = {p.name for p in (tmp_path / "bank").iterdir()}
    read = _bank_files.read_vectors_and_metadata

    def read_after_a_save(*args, **kwargs):
        bank_of(10, 3.0).save(tmp_path / "bank")  # deletes the files this load has open
        return read(*args, **kwargs)

    monkeypatch.setattr(_bank_files, "read_vectors_and_metadata", read_after_a_save)
    bank = EmbeddingBank.load(tmp_path / "bank")
    assert opened & {p.name for p in (tmp_path / "bank").iterdir()} == {"bank.json"}  # deleted under it
    assert len(bank) == 300 and bank.index_spec["kind"] == "hnsw"
    np.testing.assert_allclose(bank.vectors(), old.vectors())
    assert [bank.search(old.embedding(f"old-{i}"), k=1)[0][0].id for i in (0, 150, 299)] == [
        "old-0",
        "old-150",
        "old-299",
    ]
    monkeypatch.undo()
    assert len(EmbeddingBank.load(tmp_path / "bank")) == 10  # the next load reads the new generation
