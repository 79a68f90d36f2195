"""GS-CLIP training data: objects' Gaussians (gaussians.h5) with their frozen-CLIP targets.

As with the multi-view data, the batch sampler decides everything random about a batch (which
objects, which caption, which subset of Gaussians) from (seed, epoch, step) alone, so a resumed run
draws the same next batch. ``balanced=True`` is GS-CLIP's data balance: a class is drawn uniformly,
then an object of that class, so frequent classes do not dominate the contrastive batches.

With ``partial_fraction`` > 0, that share of the draws takes one of the object's partial clouds
(1 or a few views, ``gaussians.h5``'s ``partial_features``) instead of the full one: what a robot sees.

Image target: the mean of the frozen CLIP embeddings of ALL the object's views. The Gaussians are
fused from all views, so the target describes the same whole object (the multi-view model instead
averages the views it was given).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ddclip_core.gaussians import CloudSettings
from ddclip_core.gaussians.preprocess import draw_subset

from .data import FrozenTargets, rank_slice, steps
from .gaussian_data import GAUSSIANS, read_gaussians_h5
from .layout import IMAGE_TARGETS, DataFolder


@dataclass(frozen=True)
class GaussianItem:
    row: int
    caption: float  # in [0, 1): which of the object's captions, as a fraction of their count
    seed: int  # the draw of the Gaussian subset (with ``points``)


def class_ids(data: DataFolder, rows: np.ndarray) -> np.ndarray:
    """A class index per row: its category, else its name, else its uid (a class of its own)."""
    names = [data.objects[r].category or data.objects[r].name or data.objects[r].uid for r in rows]
    index = {name: i for i, name in enumerate(sorted(set(names)))}
    return np.array([index[name] for name in names], dtype=np.int64)


class GaussianBatchSampler(Sampler[list[GaussianItem]]):
    """Batches of objects, shuffled or class-balanced; a step's global batch is cut into one slice per rank.

    classes: a class index per row of ``rows``; with it, every draw picks a class uniformly and then
    the next of its objects in a shuffled cycle. An epoch has len(rows) // global batch steps.
    """

    def __init__(
        self,
        rows: np.ndarray,
        batch_size: int,
        *,
        classes: np.ndarray | None = None,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1 or len(rows) == 0:
            raise ValueError(f"need batch_size >= 1 and some objects, got {batch_size} and {len(rows)} objects")
        if classes is not None and len(classes) != len(rows):
            raise ValueError(f"{len(classes)} class indices for {len(rows)} rows")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.rows = np.asarray(rows, dtype=np.int64)
        self.members = None if classes is None else [self.rows[classes == c] for c in np.unique(classes)]
        self.batch_size, self.seed, self.shuffle, self.drop_last = batch_size, seed, shuffle, drop_last
        self.rank, self.world_size, self.epoch = rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _steps(self) -> list[tuple[int, int]]:
        return steps(len(self.rows), self.batch_size, self.world_size, self.drop_last)

    def __len__(self) -> int:
        return len(self._steps())

    def _order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        if self.members is not None:
            # Uniform classes; within a class, walk a shuffled cycle of its objects, so a class drawn
            # twice gives two objects (fewer duplicate rows, which are false negatives for InfoNCE).
            picked = rng.integers(len(self.members), size=self._steps()[-1][1])
            cycles = [rng.permutation(members) for members in self.members]
            seen = np.zeros(len(self.members), dtype=np.int64)
            order = np.empty(len(picked), dtype=np.int64)
            for i, c in enumerate(picked):
                order[i] = cycles[c][seen[c] % len(cycles[c])]
                seen[c] += 1
            return order
        return self.rows[rng.permutation(len(self.rows))] if self.shuffle else self.rows

    def __iter__(self) -> Iterator[list[GaussianItem]]:
        epoch = self.epoch if self.shuffle else 0
        order = self._order(epoch)
        for step, (start, stop) in enumerate(self._steps()):
            rng = np.random.default_rng([self.seed, epoch, step, 1])
            chunk = order[start:stop]
            captions, seeds = rng.random(len(chunk)), rng.integers(2**31, size=len(chunk))
            mine = rank_slice(len(chunk), self.rank, self.world_size)
            yield [
                GaussianItem(int(row), float(caption), int(seed))
                for row, caption, seed in zip(chunk[mine], captions[mine], seeds[mine], strict=True)
            ]


class GaussianDataset(Dataset):
    """Reads an object's Gaussians (padded to ``points`` or the stored P) and its targets."""

    def __init__(
        self, data: DataFolder, categories: list[str] | None = None, points: int = 0, partial_fraction: float = 0.0
    ) -> None:
        if not 0.0 <= partial_fraction <= 1.0:
            raise ValueError(f"partial_fraction must be in [0, 1], got {partial_fraction}")
        self.data, self.partial_fraction = data, partial_fraction
        self.stored_points, _ = read_gaussians_h5(data)
        self.points = points or self.stored_points
        with h5py.File(data.path(GAUSSIANS), "r") as f:
            self.counts = f["counts"][:].astype(np.int64)
            self.partial_counts = f["partial_counts"][:].astype(np.int64) if "partial_counts" in f else None
        if partial_fraction > 0 and self.partial_counts is None:
            raise ValueError(f"{data.path(GAUSSIANS)} has no partial clouds (made before they existed, or with "
                             "partial_views=()): run `ddclip data gaussians` again")  # fmt: skip
        self.targets = FrozenTargets(data, categories)
        self._files: tuple[h5py.File, h5py.File] | None = None

    def __len__(self) -> int:
        return self.data.num_objects

    def cloud_settings(self) -> CloudSettings:
        """The preprocessing of the clouds this data set trains on (budget: the points of a draw)."""
        with h5py.File(self.data.path(GAUSSIANS), "r") as f:
            attrs = dict(f.attrs)
        if "cloud" in attrs:
            stored = CloudSettings(**json.loads(attrs["cloud"]))
        else:  # written before the settings were stored: what it was made with
            stored = CloudSettings(int(attrs.get("max_points", self.stored_points)),
                                   float(attrs.get("voxel_fraction", 1 / 128)), 4)  # fmt: skip
        # Lifted at the stored count, then drawn (as __getitem__ does): inference does the same.
        draw = self.points if self.points < stored.max_points else 0
        return replace(stored, min_points=min(stored.min_points, self.points), draw_points=draw)

    def _open(self) -> tuple[h5py.File, h5py.File]:
        if self._files is None:  # here, not in __init__: h5py handles must not cross a fork
            self._files = (h5py.File(self.data.path(GAUSSIANS), "r"), h5py.File(self.data.path(IMAGE_TARGETS), "r"))
        return self._files

    def __getitem__(self, item: GaussianItem) -> dict[str, torch.Tensor]:
        gaussians, targets = self._open()
        draw = np.random.default_rng([item.seed, 2])  # its own stream: the subset draw below is unchanged
        if self.partial_fraction > 0 and draw.random() < self.partial_fraction:
            variant = int(draw.integers(self.partial_counts.shape[1]))
            count = int(self.partial_counts[item.row, variant])
            features = gaussians["partial_features"][item.row, variant, :count].astype(np.float32)
        else:
            count = int(self.counts[item.row])
            features = gaussians["features"][item.row, :count].astype(np.float32)
        features = draw_subset(features, self.points, seed=item.seed)
        count = len(features)
        padded = np.zeros((self.points, features.shape[1]), np.float32)
        padded[:count] = features
        out = {
            "features": torch.from_numpy(padded),
            "mask": torch.arange(self.points) < count,
            "image_target": torch.from_numpy(targets["img_feat"][item.row].astype(np.float32).mean(axis=0)),
            "text_target": self.targets.text_target(item.row, item.caption),
            "row": torch.tensor(item.row),
        }
        return self.targets.add_label(out, item.row)
