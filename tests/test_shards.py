"""Shard files and their virtual view: a failed write keeps the old file and leaves no temporary file."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from training.shards import missing_sources, write_shard, write_virtual


def _shard(path, rows, width=4):
    return write_shard(path, lambda f: f.create_dataset("x", data=np.arange(rows * width).reshape(rows, width)))


def test_virtual_file_reads_the_shards_as_one_dataset(tmp_path):
    parts = [_shard(tmp_path / "shards" / f"a-{i}.h5", rows) for i, rows in enumerate((2, 3))]
    write_virtual(tmp_path / "x.h5", parts, ["x"])
    with h5py.File(tmp_path / "x.h5", "r") as f:
        assert f["x"].shape == (5, 4) and f["x"][2, 0] == 0
    assert missing_sources(tmp_path / "x.h5") == []
    parts[1].unlink()
    assert missing_sources(tmp_path / "x.h5") == [str(parts[1].resolve())]


def test_a_failed_virtual_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path):
    good = [_shard(tmp_path / "shards" / "a-0.h5", 2)]
    write_virtual(tmp_path / "x.h5", good, ["x"])
    bad = [*good, _shard(tmp_path / "shards" / "b-0.h5", 2, width=5)]
    with pytest.raises(ValueError, match="b-0.h5: x has rows of shape \\(5,\\), the first shard \\(4,\\)"):
        write_virtual(tmp_path / "x.h5", bad, ["x"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards", "x.h5"]  # no .x.h5.*.tmp
    with h5py.File(tmp_path / "x.h5", "r") as f:
        assert f["x"].shape == (2, 4)


def test_a_failed_shard_write_leaves_nothing(tmp_path):
    def write(f):
        f.create_dataset("x", data=np.zeros(3))
        raise RuntimeError("worker failed")

    with pytest.raises(RuntimeError, match="worker failed"):
        write_shard(tmp_path / "shards" / "a-0.h5", write)
    assert list((tmp_path / "shards").iterdir()) == []
