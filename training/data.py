"""Training data: objects with a random subset of their views, and their frozen-CLIP targets.

The batch sampler decides everything random about a batch (which objects, how many views F, which
views, which caption) from (seed, epoch, step) alone, so a run resumed from a checkpoint draws the
same next batch, and every DDP rank uses the same F at the same step (balanced work). The dataset
only reads: the selected views of an object and the mean of their frozen CLIP embeddings.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .layout import IMAGE_TARGETS, IMAGES, TEXT_TARGETS, DataError, DataFolder, check_shards, read_text_targets


@dataclass(frozen=True)
class Item:
    row: int
    views: tuple[int, ...]
    caption: float  # in [0, 1): which of the object's captions, as a fraction of their count


class ViewBatchSampler(Sampler[list[Item]]):
    """Batches of objects; each batch has F views per object, F uniform in [min_views, max_views].

    With world_size > 1 a step's global batch (batch_size x world_size objects) is cut into one
    slice per rank. ``fixed_views`` (validation): F fixed, the same draw every epoch.
    """

    def __init__(
        self,
        rows: np.ndarray,
        batch_size: int,
        *,
        min_views: int = 1,
        max_views: int = 6,
        total_views: int = 12,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not 1 <= min_views <= max_views <= total_views:
            raise ValueError(f"need 1 <= min_views <= max_views <= {total_views}, got {min_views}..{max_views}")
        if batch_size < 1 or len(rows) == 0:
            raise ValueError(f"need batch_size >= 1 and some objects, got {batch_size} and {len(rows)} objects")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.rows = np.asarray(rows, dtype=np.int64)
        self.batch_size, self.min_views, self.max_views = batch_size, min_views, max_views
        self.total_views, self.seed, self.shuffle, self.drop_last = total_views, seed, shuffle, drop_last
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(steps(len(self.rows), self.batch_size, self.world_size, self.drop_last))

    def __iter__(self) -> Iterator[list[Item]]:
        epoch = self.epoch if self.shuffle else 0
        order = self.rows
        if self.shuffle:
            order = self.rows[np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))]
        for step, (start, stop) in enumerate(steps(len(order), self.batch_size, self.world_size, self.drop_last)):
            rng = np.random.default_rng([self.seed, epoch, step])
            chunk = order[start:stop]
            views = int(rng.integers(self.min_views, self.max_views + 1))
            picks = [tuple(sorted(rng.choice(self.total_views, views, replace=False).tolist())) for _ in chunk]
            captions = rng.random(len(chunk))
            mine = rank_slice(len(chunk), self.rank, self.world_size)
            yield [
                Item(int(row), pick, float(caption))
                for row, pick, caption in zip(chunk[mine], picks[mine], captions[mine], strict=True)
            ]


def steps(count: int, batch_size: int, world_size: int, drop_last: bool) -> list[tuple[int, int]]:
    """(start, stop) of each step's global batch in ``count`` ordered rows. Each rank gets as many rows as
    the others at every step (the contrastive loss gathers them across ranks), and no row comes twice (a
    copy would be its own negative, and count twice in validation): the rows are trimmed to a multiple
    of world_size, a set smaller than one global batch is one smaller batch, and the last partial batch
    runs unless ``drop_last``."""
    usable = count - count % world_size
    if usable == 0:
        raise ValueError(f"{count} object(s) cannot be shared by {world_size} ranks: each needs at least one")
    global_batch = batch_size * world_size
    full, rest = divmod(usable, global_batch)
    sizes = [global_batch] * full + ([rest] if rest and (not drop_last or not full) else [])
    starts = np.cumsum([0, *sizes])
    return [(int(a), int(b)) for a, b in itertools.pairwise(starts)]


def rank_slice(size: int, rank: int, world_size: int) -> slice:
    """This rank's part of a step's global batch of ``size`` rows (a multiple of world_size)."""
    per = size // world_size
    return slice(rank * per, (rank + 1) * per)


class FrozenTargets:
    """The frozen-CLIP targets of a data folder (checked once) and the zero-shot label of each object.

    Shared by the multi-view and the Gaussian datasets; the h5 file of image targets is opened by
    the dataset in each worker (h5py handles must not cross a fork).
    """

    def __init__(self, data: DataFolder, categories: list[str] | None = None) -> None:
        # Zero-shot validation: the index of each object's category in ``categories`` (-1: none).
        index = {name: i for i, name in enumerate(categories or [])}
        self.labels = np.array([index.get(obj.category, -1) for obj in data.objects], dtype=np.int64)
        self.with_labels = categories is not None
        for name in (IMAGE_TARGETS, TEXT_TARGETS):
            if not data.path(name).is_file():
                raise DataError(f"{data.root}: no {name} (run `ddclip data targets` first)")
        check_shards(data.path(IMAGE_TARGETS))
        with h5py.File(data.path(IMAGE_TARGETS), "r") as f:
            if "img_feat" not in f:
                raise DataError(f"{data.path(IMAGE_TARGETS)}: no dataset 'img_feat'")
            shape = f["img_feat"].shape
        if shape[:2] != (data.num_objects, data.num_views):
            raise DataError(
                f"{data.path(IMAGE_TARGETS)}: img_feat {shape} does not match {data.num_objects} objects x "
                f"{data.num_views} views"
            )
        self.embed_dim = int(shape[2])
        self.text_feat, self.text_offsets = read_text_targets(data.path(TEXT_TARGETS), data.num_objects)
        if self.text_feat.shape[1] != self.embed_dim:
            raise DataError(f"text targets have dim {self.text_feat.shape[1]}, image targets {self.embed_dim}")

    def text_target(self, row: int, caption: float) -> torch.Tensor:
        """One of the object's caption embeddings: ``caption`` in [0, 1) picks which."""
        start, end = self.text_offsets[row], self.text_offsets[row + 1]
        return torch.from_numpy(
            self.text_feat[start + min(int(caption * (end - start)), end - start - 1)].astype(np.float32)
        )

    def add_label(self, out: dict[str, torch.Tensor], row: int) -> dict[str, torch.Tensor]:
        if self.with_labels:
            out["label"] = torch.tensor(self.labels[row])
        return out


class MultiViewDataset(Dataset):
    """Reads views and targets of :class:`Item` s from a data folder (h5 opened per worker)."""

    def __init__(self, data: DataFolder, categories: list[str] | None = None) -> None:
        self.data = data
        self.targets = FrozenTargets(data, categories)
        self._files: tuple[h5py.File, h5py.File] | None = None

    def __len__(self) -> int:
        return self.data.num_objects

    def _open(self) -> tuple[h5py.File, h5py.File]:
        if self._files is None:  # here, not in __init__: h5py handles must not cross a fork
            self._files = (h5py.File(self.data.path(IMAGES), "r"), h5py.File(self.data.path(IMAGE_TARGETS), "r"))
        return self._files

    def __getitem__(self, item: Item) -> dict[str, torch.Tensor]:
        images, targets = self._open()
        views = list(item.views)
        pixels = images["imgs"][item.row, views]  # h5py reads sorted indices in one go
        image_target = targets["img_feat"][item.row, views].astype(np.float32).mean(axis=0)
        out = {
            "pixels": torch.from_numpy(pixels),
            "image_target": torch.from_numpy(image_target),
            "text_target": self.targets.text_target(item.row, item.caption),
            "row": torch.tensor(item.row),
        }
        return self.targets.add_label(out, item.row)


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}
