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
import os
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import faiss
import numpy as np
import numpy.lib.format as npy_format
import pyarrow as pa
import pyarrow.parquet as pq

from .atomic import atomic_path, write_text_atomically

FORMAT = "ddclip-bank"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
BASE_FIELDS = ("id", "name", "category", "source")  # metadata every row has, as text
MANIFEST = "bank.json"
LOAD_ATTEMPTS = 5
T = TypeVar("T")
UNIT_CHECK_ROWS = 1 << 16
UNIT_TOLERANCE = 1e-3
V1_FILES = {"vectors": "vectors.npy", "metadata": "metadata.parquet", "index": "index.faiss"}


class BankError(ValueError):
    """A bank that cannot be used as asked: corrupt files, wrong dimension, unknown ids."""


def write_bank_files(
    folder: Path, vectors: np.ndarray, metadata: pa.Table, index: Any, manifest: dict[str, Any]
) -> dict[str, Any]:
    """Write one generation of data files, then the manifest naming them; returns the manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    previous = _files_named(folder)
    now = time.time_ns()  # UTC to the microsecond: a later save's generation sorts after an earlier one's
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now // 10**9)) + f"{now // 1000 % 10**6:06d}"
    generation = f"{stamp}-{secrets.token_hex(3)}"
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
    _remove_leftovers(folder, generation, current)
    return manifest


LEFTOVER_TMP_S = 3600  # a temporary file this old belongs to a save that died (a live one takes minutes)


def _remove_leftovers(folder: Path, generation: str, current: set[str]) -> None:
    """Files of saves that were killed or failed before their manifest (each a copy of the vectors, 1.6 GB
    for an Objaverse bank) would stay forever: older generations than this one that no manifest names, and
    old temporary files. Generations named later (a newer save) are left alone."""
    for path in folder.iterdir():
        name = path.name
        parts = name.split("-", 1)
        if parts[0] in ("vectors", "metadata", "index") and len(parts) == 2 and name not in current:
            if parts[1].rsplit(".", 1)[0] < generation:
                path.unlink(missing_ok=True)
        elif name.startswith(".") and name.endswith(".tmp"):
            try:
                if time.time() - path.stat().st_mtime > LEFTOVER_TMP_S:
                    path.unlink(missing_ok=True)
            except FileNotFoundError:
                pass


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
    files = manifest.get("files", {})
    entries = files.items() if isinstance(files, dict) else [("files", files)]
    for role, entry in entries:  # a save deletes the files the old manifest named: only the folder's own
        name = entry.get("path") if isinstance(entry, dict) else None
        if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name or "\\" in name:
            raise BankError(f"{path}: the {role} file must be a file name in the bank's folder, got {name!r}")
    return manifest


def data_file(folder: Path, manifest: dict[str, Any], role: str) -> Path | None:
    """The path of the manifest's ``role`` file (vectors, metadata, index); None if it names none."""
    if manifest["version"] == 1:
        path = folder / V1_FILES[role]
        return path if role != "index" or path.is_file() else None
    entry = manifest.get("files", {}).get(role)
    return None if entry is None else folder / entry["path"]


class GenerationGone(BankError):
    """A file the manifest names is missing: lost, or deleted by a save since the manifest was read."""


def read_current_generation(folder: Path, mmap: bool, read: Callable[[dict[str, Any], dict[str, Any]], T]) -> T:
    """``read(manifest, handles)`` on the current manifest and its open data files. Should a save delete
    those files between reading the manifest and opening them, the new manifest is read instead."""
    for attempt in range(LOAD_ATTEMPTS):
        manifest = read_manifest(folder)
        try:
            with opened_generation(folder, manifest, mmap) as handles:
                return read(manifest, handles)
        except GenerationGone:
            if attempt == LOAD_ATTEMPTS - 1 or read_manifest(folder) == manifest:
                raise
    raise AssertionError("unreachable")


@contextmanager
def opened_generation(folder: Path, manifest: dict[str, Any], mmap: bool) -> Iterator[dict[str, Any]]:
    """Open the manifest's data files together, right after the manifest was read, each size checked.
    Once open, a concurrent save that deletes them (a new generation) takes nothing from this reader:
    a load then reads one whole generation however long it takes. Metadata is memory-mapped if ``mmap``."""
    with ExitStack() as stack:
        handles: dict[str, Any] = {}
        for role in ("vectors", "metadata", "index"):
            path = data_file(folder, manifest, role)
            if path is None:
                continue
            try:
                if role == "metadata":
                    handle = stack.enter_context(pa.memory_map(str(path)) if mmap else pa.OSFile(str(path)))
                    size = handle.size()
                else:
                    handle = stack.enter_context(open(path, "rb"))
                    size = os.fstat(handle.fileno()).st_size
            except FileNotFoundError:
                raise GenerationGone(f"{folder}: the manifest names {path.name}, which is missing") from None
            except OSError as exc:
                raise BankError(f"{path}: cannot open: {exc}") from exc
            expected = manifest.get("files", {}).get(role, {}).get("bytes", size)
            if size != expected:
                raise BankError(f"{path}: {size} bytes, the manifest says {expected}: truncated or replaced")
            handles[role] = handle
        if "vectors" not in handles or "metadata" not in handles:
            raise BankError(f"{folder}: the manifest names no vectors or metadata file")
        yield handles


def read_vectors_and_metadata(
    folder: Path, manifest: dict[str, Any], handles: dict[str, Any], dim: int, mmap: bool
) -> tuple[np.ndarray, pa.Table]:
    vectors_path, metadata_path = data_file(folder, manifest, "vectors"), data_file(folder, manifest, "metadata")
    try:
        vectors = _read_npy(handles["vectors"], mmap)
        table = pq.read_table(handles["metadata"])
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
    _check_unit_rows(vectors, vectors_path, table)
    return vectors, table


def _check_unit_rows(vectors: np.ndarray, path: Path | None, table: pa.Table) -> None:
    """Every saved row was L2-normalised; one that is not (NaN, infinity, flipped bits) is a corrupt file.
    Checked here because NaN scores rank first in a search. Memory-bound: ~0.1 s per GB already in memory."""
    for start in range(0, len(vectors), UNIT_CHECK_ROWS):
        chunk = np.asarray(vectors[start : start + UNIT_CHECK_ROWS])
        squared = np.einsum("ij,ij->i", chunk, chunk)
        bad = np.flatnonzero(~(np.abs(squared - 1.0) <= UNIT_TOLERANCE))
        if len(bad):
            row = start + int(bad[0])
            item_id = table.column("id")[row].as_py()
            raise BankError(
                f"{path}: row {row} (id {item_id!r}) is not a unit vector (squared norm {squared[bad[0]]}): "
                "the file is corrupt; save the bank again from its source or re-import it"
            )


def _read_npy(handle: BinaryIO, mmap: bool) -> np.ndarray:
    """An .npy array from an open file; mapped from that file (not its name, which may be gone) if ``mmap``."""
    if not mmap:
        return np.load(handle, allow_pickle=False)
    version = npy_format.read_magic(handle)
    if version == (1, 0):
        shape, fortran, dtype = npy_format.read_array_header_1_0(handle)
    elif version == (2, 0):
        shape, fortran, dtype = npy_format.read_array_header_2_0(handle)
    else:
        raise ValueError(f"unsupported .npy version {version}")
    if dtype.hasobject:
        raise ValueError("object arrays are not read (they would need unpickling)")
    if 0 in shape:
        return np.empty(shape, dtype)
    order = "F" if fortran else "C"
    return np.memmap(handle, dtype=dtype, mode="r", shape=shape, order=order, offset=handle.tell())


def _files_named(folder: Path) -> set[str]:
    """The data files the folder's current manifest uses (format 1: the fixed names that exist)."""
    try:
        manifest = read_manifest(folder)
    except (FileNotFoundError, BankError):
        return set()
    if manifest["version"] == 1:
        return {name for name in V1_FILES.values() if (folder / name).is_file()}
    return {entry["path"] for entry in manifest.get("files", {}).values()}


def append_records(table: pa.Table, records: list[dict[str, Any]]) -> pa.Table:
    """``table`` with a row per metadata record: the base fields as text, other fields as they come.
    BankError when a field's values do not fit the type it has in the table."""
    columns: dict[str, list[Any]] = {name: [] for name in BASE_FIELDS}
    for record in records:
        for key in record:
            columns.setdefault(key, [])
    for record in records:
        for key, values in columns.items():
            value = record.get(key)
            values.append(None if value is None else (value if key not in BASE_FIELDS else str(value)))
    try:
        new = pa.table({k: pa.array(v, pa.string()) if k in BASE_FIELDS else pa.array(v) for k, v in columns.items()})
        return pa.concat_tables([table, new], promote_options="default")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise BankError(f"metadata that does not fit the bank's fields (a field of another type?): {exc}") from None
