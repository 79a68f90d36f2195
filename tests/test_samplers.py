"""The training batch samplers: the same F on every rank at a step, deterministic per (seed, epoch, step),
no object twice in a batch, and every rank as many rows as the others."""

from __future__ import annotations

import numpy as np
import pytest

from training.data import ViewBatchSampler


def test_view_sampler_bounds_and_determinism():
    rows = np.arange(40)
    ranks = [ViewBatchSampler(rows, 5, min_views=2, max_views=4, seed=3, rank=r, world_size=2) for r in range(2)]
    batches = [list(s) for s in ranks]
    assert len(batches[0]) == len(batches[1]) == 4
    for a, b in zip(*batches, strict=True):
        assert {len(i.views) for i in a} == {len(i.views) for i in b}  # same F on every rank at a step
        assert len({len(i.views) for i in a}) == 1
        assert not {i.row for i in a} & {i.row for i in b}
        for item in a + b:
            assert 2 <= len(item.views) <= 4 and len(set(item.views)) == len(item.views)
            assert all(0 <= v < 12 for v in item.views) and 0 <= item.caption < 1
    seen = {len(i.views) for batch in batches[0] for i in batch}
    assert seen <= {2, 3, 4}
    assert list(ranks[0]) == batches[0]  # same epoch, same draw
    ranks[0].set_epoch(1)
    assert list(ranks[0]) != batches[0]
    with pytest.raises(ValueError, match="min_views"):
        ViewBatchSampler(rows, 5, min_views=0, max_views=4)


@pytest.mark.parametrize(
    ("count", "batch", "world", "shuffle", "sizes"),
    [
        (300, 400, 1, False, [300]),  # validation smaller than a batch: each object once (was 400, 100 twice)
        (50, 400, 1, True, [50]),  # a tiny training set: one smaller batch, no object its own negative
        (11, 4, 2, False, [4, 1]),  # DDP validation: equal slices (was [4, 1] and [4, 0]); the 11th is left out
        (7, 4, 2, True, [3]),  # DDP training, fewer than a global batch: one even batch of 6
    ],
)
def test_batches_never_repeat_an_object_and_every_rank_gets_as_many(count, batch, world, shuffle, sizes):
    rows = np.arange(count)
    ranks = [ViewBatchSampler(rows, batch, seed=1, shuffle=shuffle, drop_last=shuffle, rank=r, world_size=world)
             for r in range(world)]  # fmt: skip
    steps = list(zip(*[list(sampler) for sampler in ranks], strict=True))
    assert [len(step[0]) for step in steps] == sizes and all(len({len(b) for b in step}) == 1 for step in steps)
    drawn = [item.row for step in steps for b in step for item in b]  # before: a rank got [] (collate failed)
    assert len(drawn) == len(set(drawn))
    with pytest.raises(ValueError, match="1 object\\(s\\) cannot be shared by 2 ranks"):
        list(ViewBatchSampler(np.arange(1), 4, rank=0, world_size=2))
