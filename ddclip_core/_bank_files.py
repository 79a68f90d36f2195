"""An EmbeddingBank folder on disk: written so that no reader ever sees a half-saved bank.

Format 2 (written): every save writes NEW data files whose names carry a generation token
(``vectors-<g>.npy``, ``metadata-<g>.parquet``, ``index-<g>.faiss``), then replaces ``bank.json``
atomically to name them, then deletes the previous generation's files. A crash at any point leaves a
manifest that names a complete set of files; a node that memory-maps the old ``vectors`` keeps its
(deleted but still open) file and never gets SIGBUS. The manifest records each file's size, checked
on load. Format 1 (fixed names ``vectors.npy``, ``metadata.parquet``, ``index.faiss``) is still read.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .atomic import atomic_path, write_text_atomically

FORMAT = "ddclip-bank"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST = "bank.json"
V1_FILES = {"vectors": "vectors.npy", "metadata": "metadata.parquet", "index": "index.faiss"}


class BankError(ValueError):
    """A bank that cannot be used as asked: corrupt files, wrong dimension, unknown ids."""


def write_bank_files(
    folder: Path, vectors: np.ndarray, metadata: pa.Table, index: Any, manifest: dict[str, Any]
) -> dict[str, Any]:
    """Write one generation of data files, then the manifest naming them; returns the manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    previous = _files_named(folder)
    generation = f"{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"
    files: dict[str, dict[str, Any]] = {}
    names = {"vectors": f"vectors-{generation}.npy", "metadata": f"metadata-{generation}.parquet"}
    if index is not None:
        names["index"] = f"index-{generation}.faiss"
    for role, name in names.items():
        with atomic_path(folder / name) as tmp:
            if role == "vectors":
                with open(tmp, "wb") as handle:
                    np.save(handle, np.ascontiguousarray(vectors, dtype=np.float32))
            elif role == "metadata":
                pq.write_table(metadata, tmp)
            else:
                faiss.write_index(index, str(tmp))
        files[role] = {"path": name, "bytes": (folder / name).stat().st_size}
    manifest = {"format": FORMAT, "version": FORMAT_VERSION, **manifest, "files": files}
    write_text_atomically(folder / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    current = {entry["path"] for entry in files.values()}
    for name in previous - current:  # readers that mapped these keep their open copies
        (folder / name).unlink(missing_ok=True)
    return manifest


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"not a ddclip bank (no {MANIFEST}): {folder}")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BankError(f"{path}: corrupt manifest: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise BankError(f"{folder}: not a ddclip bank (format {found!r})")
    if manifest.get("version") not in READABLE_VERSIONS:
        raise BankError(
            f"{folder}: bank format version {manifest.get('version')}, this ddclip reads {READABLE_VERSIONS}"
        )
    return manifest


def data_file(folder: Path, manifest: dict[str, Any], role: str) -> Path | None:
    """The path of the manifest's ``role`` file (vectors, metadata, index), its size checked; None if absent."""
    if manifest["version"] == 1:
        path = folder / V1_FILES[role]
        return path if role != "index" or path.is_file() else None
    entry = manifest.get("files", {}).get(role)
    if entry is None:
        return None
    path = folder / entry["path"]
    if not path.is_file():
        raise BankError(f"{folder}: the manifest names {entry['path']}, which is missing (bank changed or lost?)")
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise BankError(f"{path}: {size} bytes, the manifest says {entry['bytes']}: truncated or replaced")
    return path


def read_vectors_and_metadata(
    folder: Path, manifest: dict[str, Any], dim: int, mmap: bool
) -> tuple[np.ndarray, pa.Table]:
    vectors_path, metadata_path = data_file(folder, manifest, "vectors"), data_file(folder, manifest, "metadata")
    if vectors_path is None or metadata_path is None:
        raise BankError(f"{folder}: the manifest names no vectors or metadata file")
    try:
        vectors = np.load(vectors_path, mmap_mode="r" if mmap else None, allow_pickle=False)
        table = pq.read_table(metadata_path, memory_map=mmap)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise BankError(f"{folder}: cannot read bank files: {exc}") from exc
    if vectors.ndim != 2 or vectors.shape[1] != dim or vectors.dtype != np.float32:
        raise BankError(f"{vectors_path}: {vectors.dtype} {vectors.shape}, expected float32 (N, {dim})")
    if table.num_rows != len(vectors) or manifest.get("rows") != len(vectors):
        raise BankError(
            f"{folder}: corrupt bank: {len(vectors)} vectors, {table.num_rows} metadata rows, "
            f"manifest says {manifest.get('rows')}"
        )
    if "id" not in table.column_names:
        raise BankError(f"{metadata_path}: no 'id' column")
    return vectors, table


def _files_named(folder: Path) -> set[str]:
    """The data files the folder's current manifest uses (format 1: the fixed names that exist)."""
    try:
        manifest = read_manifest(folder)
    except (FileNotFoundError, BankError):
        return set()
    if manifest["version"] == 1:
        return {name for name in V1_FILES.values() if (folder / name).is_file()}
    return {entry["path"] for entry in manifest.get("files", {}).values()}
