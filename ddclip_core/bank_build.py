"""Building a bank from a folder of objects with the encoder, batched, with a progress bar.

Layout: each sub-folder is one object whose images are its views; each image directly in the
folder is one object (a strip of F views with num_views=F). An optional ``metadata.csv`` with an
``id`` column adds fields (name, category, anything) to the objects it names.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .bank import EmbeddingBank
from .images import IMAGE_SUFFIXES


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def find_objects(folder: str | Path) -> list[tuple[str, list[Path]]]:
    """(object id, its image files) for every object in ``folder``, in a stable order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"objects folder not found: {folder}")
    objects = [(sub.name, _images(sub)) for sub in sorted(folder.iterdir()) if sub.is_dir()]
    objects = [(name, images) for name, images in objects if images]
    objects += [(image.stem, [image]) for image in _images(folder)]
    if not objects:
        raise ValueError(f"no objects in {folder}: expected sub-folders of views or image files")
    return objects


def extra_metadata(folder: Path) -> dict[str, dict[str, Any]]:
    path = folder / "metadata.csv"
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    if rows and "id" not in rows[0]:
        raise ValueError(f"{path}: needs an 'id' column naming the objects")
    return {row["id"]: {k: v for k, v in row.items() if v} for row in rows}


def build_bank(
    model: Any,
    folder: str | Path,
    *,
    num_views: int | None = None,
    batch_size: int = 16,
    source: str | None = None,
    progress: bool = True,
) -> EmbeddingBank:
    """Embed every object of ``folder`` with ``model`` into a new bank (exact index)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    folder = Path(folder)
    objects = find_objects(folder)
    extra = extra_metadata(folder)
    bank = EmbeddingBank(model.embed_dim, weights_id=model.weights_id)
    with tqdm(total=len(objects), desc="embedding objects", unit="obj", disable=not progress) as bar:
        for start in range(0, len(objects), batch_size):
            chunk = objects[start : start + batch_size]
            embeddings = model.encode_views([images for _, images in chunk], num_views=num_views)
            records = [object_record(name, images, source or folder.name, num_views, extra) for name, images in chunk]
            bank.add(embeddings, records, weights_id=model.weights_id)
            bar.update(len(chunk))
    return bank


def object_record(
    name: str, images: list[Path], source: str, num_views: int | None, extra: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """The bank metadata of one object of a folder."""
    record = {
        "id": name,
        "name": name.replace("_", " "),
        "source": source,
        "image": str(images[0].resolve()),
        "views": str(len(images) * (num_views or 1)),
    }
    if num_views:
        record["strip_views"] = str(num_views)
    record.update(extra.get(name, {}))
    return record
