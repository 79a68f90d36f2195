"""``ddclip data targets --ray``: frozen-CLIP targets as Ray Data batch inference.

The data set is a list of shards (contiguous rows of the data folder); ``map_batches`` runs them
on an actor pool, each actor loading the model once (on a GPU when the cluster has them). An actor
reads its rows' views (from ``mv_images.h5``, plain or virtual), encodes every view alone and every
caption of those objects exactly as ``compute_targets`` does, and writes one shard file
(``shards/targets-<token>-<i>.h5``: img_feat, text_feat). The driver then presents them as
``image_embeddings.h5`` and ``text_embeddings.h5`` (virtual datasets; offsets and captions real),
which training and evaluation read unchanged.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import h5py
import numpy as np

from ddclip_core.cluster import ModelSpec, map_shards, shards
from ddclip_core.text_space import encode_probe, text_probe

from .layout import IMAGE_TARGETS, IMAGES, TEXT_TARGETS, DataError, DataFolder
from .shards import delete, discard, new_token, shard_path, write_shard, write_virtual
from .targets import flat_captions, image_embeddings, object_captions, write_text_index

SHARD_OBJECTS = 512  # 6 k views per shard: large enough to keep an actor busy, small enough to retry


class TargetShardWriter:
    """A Ray Data actor: the model, loaded once; each call encodes and writes one shard of rows."""

    def __init__(self, spec: dict, root: str, templates: str, batch_size: int, dtype: str) -> None:
        self.model = ModelSpec(**spec).load()
        self.data = DataFolder(root)
        self.captions = object_captions(self.data, templates)
        self.batch_size, self.dtype = batch_size, dtype
        self.text_space = encode_probe(text_probe(self.model))  # the tower's fingerprint, once per actor

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = [json.dumps(self.shard(**json.loads(task))) for task in batch["task"]]
        return {"shard": batch["shard"], "result": np.array(results, dtype=object)}

    def shard(self, start: int, stop: int, path: str) -> dict:
        with h5py.File(self.data.path(IMAGES), "r") as src:
            feats = [
                image_embeddings(self.model, src["imgs"][row : min(row + self.batch_size, stop)])
                for row in range(start, stop, self.batch_size)
            ]
        flat, _ = flat_captions(self.captions[start:stop])
        text = self.model.encode_text(flat, batch_size=256).cpu().numpy()

        def write(f: h5py.File) -> None:
            f.create_dataset("img_feat", data=np.concatenate(feats).astype(self.dtype))
            f.create_dataset("text_feat", data=text.astype(self.dtype))
            f.attrs["weights_id"] = self.model.weights_id

        write_shard(Path(path), write)
        return {"weights_id": self.model.weights_id, "texts": len(flat), "text_space": self.text_space}


def compute_targets_ray(
    data: DataFolder,
    model: ModelSpec,
    *,
    templates: str = "simple",
    batch_size: int = 32,
    dtype: str = "float16",
    shard_objects: int = SHARD_OBJECTS,
    actors: int | None = None,
    gpus: bool | None = None,
    progress: bool = True,
) -> tuple[int, int]:
    """``compute_targets`` on the Ray cluster joined; returns (view embeddings, caption embeddings)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    flat, offsets = flat_captions(object_captions(data, templates))  # checks the captions before any work
    token = new_token()
    tasks = [
        {"start": start, "stop": stop, "path": str(shard_path(data.root, "targets", token, i))}
        for i, (start, stop) in enumerate(shards(data.num_objects, shard_objects))
    ]
    constructor = {
        "spec": asdict(model), "root": str(data.root), "templates": templates, "batch_size": batch_size, "dtype": dtype,
    }  # fmt: skip
    results: dict[int, dict] = {}
    try:
        for row in map_shards(
            tasks, TargetShardWriter, constructor, device=model.device, actors=actors, gpus=gpus, progress=progress
        ):
            results[int(row["shard"])] = json.loads(row["result"])
    except BaseException:
        discard(data.root, "targets", token)
        raise
    weights = {result["weights_id"] for result in results.values()}
    if len(results) != len(tasks) or len(weights) != 1 or sum(r["texts"] for r in results.values()) != len(flat):
        discard(data.root, "targets", token)
        raise DataError(f"targets: {len(results)} of {len(tasks)} shards came back, from weights {sorted(weights)}")
    weights_id = weights.pop()
    text_space = results[0]["text_space"]  # one model: the shards' probes differ at most by their device's rounding
    parts = [Path(task["path"]) for task in tasks]
    stale = write_virtual(
        data.path(IMAGE_TARGETS), parts, ["img_feat"], extra=lambda f: f.attrs.__setitem__("weights_id", weights_id)
    )
    stale |= write_virtual(
        data.path(TEXT_TARGETS), parts, ["text_feat"],
        extra=lambda f: write_text_index(f, flat, offsets, weights_id, templates, text_space),
    )  # fmt: skip
    delete(stale)
    return data.num_objects * data.num_views, len(flat)
