"""``ddclip bank build --ray``: the embeddings of a folder of objects as Ray Data batch inference.

The objects (``find_objects``, same order) are cut into shards; ``map_batches`` runs the shards on an
actor pool, each actor loading the model once (on a GPU when the cluster has them) and encoding its
objects' views in batches exactly as ``build_bank`` does. Only the embeddings come back (2 KB per
object against ~1 MB of views read by the workers); the driver adds them in the folder's order with
the same metadata, so the bank is the one ``build_bank`` makes, and saved and indexed as usual (the
index is built over all vectors in one place anyway).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .bank import EmbeddingBank
from .bank_build import extra_metadata, find_objects, object_record
from .cluster import ModelSpec, map_shards, shards

SHARD_OBJECTS = 256


class BankShardEncoder:
    """A Ray Data actor: the model, loaded once; each call embeds one shard of objects."""

    def __init__(self, spec: dict, num_views: int | None, batch_size: int) -> None:
        self.model = ModelSpec(**spec).load()
        self.num_views, self.batch_size = num_views, batch_size

    @torch.inference_mode()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results, vectors = [], []
        for task in batch["task"]:
            objects = [[Path(p) for p in images] for images in json.loads(task)]
            chunks = [
                self.model.encode_views(objects[i : i + self.batch_size], num_views=self.num_views).float().cpu()
                for i in range(0, len(objects), self.batch_size)
            ]
            embeddings = torch.cat(chunks).numpy().astype(np.float32)
            results.append(json.dumps({"weights_id": self.model.weights_id, "shape": list(embeddings.shape)}))
            vectors.append(embeddings.tobytes())
        return {
            "shard": batch["shard"],
            "result": np.array(results, dtype=object),
            "vectors": np.array(vectors, dtype=object),
        }


def build_bank_ray(
    model: ModelSpec,
    folder: str | Path,
    *,
    num_views: int | None = None,
    batch_size: int = 16,
    source: str | None = None,
    shard_objects: int = SHARD_OBJECTS,
    actors: int | None = None,
    gpus: bool | None = None,
    progress: bool = True,
) -> EmbeddingBank:
    """``build_bank`` on the Ray cluster joined (``cluster.connect``)."""
    folder = Path(folder).resolve()  # workers do not share the driver's working directory
    objects = find_objects(folder)
    extra = extra_metadata(folder)
    ranges = shards(len(objects), shard_objects)
    tasks = [[[str(p) for p in images] for _, images in objects[start:stop]] for start, stop in ranges]
    constructor = {"spec": asdict(model), "num_views": num_views, "batch_size": batch_size}
    embedded: dict[int, tuple[dict[str, Any], bytes]] = {}
    with tqdm(total=len(objects), desc="embedding objects (ray)", unit="obj", disable=not progress) as bar:
        for row in map_shards(
            tasks, BankShardEncoder, constructor, device=model.device, actors=actors, gpus=gpus, progress=progress
        ):
            index = int(row["shard"])
            embedded[index] = (json.loads(row["result"]), row["vectors"])
            bar.update(ranges[index][1] - ranges[index][0])
    weights = {result["weights_id"] for result, _ in embedded.values()}
    if len(embedded) != len(tasks) or len(weights) != 1:
        raise RuntimeError(f"bank build: {len(embedded)} of {len(tasks)} shards came back, weights {sorted(weights)}")
    weights_id = weights.pop()
    dim = embedded[0][0]["shape"][1]
    bank = EmbeddingBank(dim, weights_id=weights_id)
    for index, (start, stop) in enumerate(ranges):
        result, data = embedded[index]
        vectors = np.frombuffer(data, dtype=np.float32).reshape(result["shape"])
        chunk = objects[start:stop]
        records = [object_record(name, images, source or folder.name, num_views, extra) for name, images in chunk]
        bank.add(vectors, records, weights_id=weights_id)
    return bank
