"""PLY files of 3D Gaussian splats and of coloured point clouds (binary and ascii), as numpy tables.

The 3DGS layout (the reference implementation's ``point_cloud.ply``) is one ``vertex`` element with
float properties x, y, z, nx, ny, nz, f_dc_0..2, f_rest_0..M-1, opacity, scale_0..2, rot_0..3.
Values are stored before activation: opacity is a logit, scales are logs, the quaternion
(rot_0 = w) is not normalised, and the view-independent colour is 0.5 + SH_C0 * f_dc.

Every problem with a file raises ``PlyError`` (a ValueError) that names the file and the problem:
bad header, missing fields, NaN values, a vertex count that does not match the data, truncation.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from .splats import SH_C0, Gaussians

_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip
_FORMATS = {"binary_little_endian": "<", "binary_big_endian": ">", "ascii": "ascii"}
_MAX_HEADER = 1 << 16
GAUSSIAN_FIELDS = ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", *(f"scale_{i}" for i in range(3)),
                   *(f"rot_{i}" for i in range(4)))  # fmt: skip
POINT_FIELDS = ("x", "y", "z", "red", "green", "blue")
_OPACITY_EPS = 1e-7  # keeps the stored logit finite for opacity 0 or 1


class PlyError(ValueError):
    """A PLY file that cannot be read as asked: the message names the file and the problem."""


# ---------------------------------------------------------------------------------------- tables
def read_vertices(path: str | os.PathLike) -> np.ndarray:
    """The ``vertex`` element of a PLY file as a structured array (any scalar properties)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PLY file not found: {path}")
    data = path.read_bytes()
    end = re.search(rb"end_header[ \t]*\r?\n", data[:_MAX_HEADER])
    if not data.startswith(b"ply") or end is None:
        what = "no 'ply' magic" if not data.startswith(b"ply") else "no 'end_header' line"
        raise PlyError(f"{path}: not a PLY file ({what})")
    fmt, count, dtype, trailing = _parse_header(path, data[: end.start()].decode("ascii", "replace"))
    body = data[end.end() :]
    if fmt == "ascii":
        return _read_ascii(path, body, count, dtype, trailing)
    dtype = dtype.newbyteorder(fmt)
    need = count * dtype.itemsize
    if len(body) < need:
        raise PlyError(
            f"{path}: truncated: the header declares {count} vertices ({need} bytes) but only {len(body)} bytes "
            f"follow ({len(body) // dtype.itemsize} complete vertices)"
        )
    if len(body) > need and not trailing:
        raise PlyError(
            f"{path}: {len(body) - need} bytes after the {count} declared vertices: the vertex count in the "
            "header does not match the data"
        )
    return np.frombuffer(body, dtype=dtype, count=count).astype(dtype.newbyteorder("="))


def _parse_header(path: Path, header: str) -> tuple[str, int, np.dtype, bool]:
    lines = [line.split() for line in header.splitlines()[1:]]
    fmt, count, props, elements = None, None, [], []
    for words in lines:
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format":
            if len(words) != 3 or words[1] not in _FORMATS:
                raise PlyError(f"{path}: unsupported format line {' '.join(words)!r}")
            fmt = _FORMATS[words[1]]
        elif words[0] == "element" and len(words) == 3 and words[2].isdigit():
            elements.append(words[1])
            if words[1] == "vertex":
                count = int(words[2])
        elif words[0] == "property" and elements:
            if elements[-1] != "vertex":
                continue
            if words[1] == "list":
                raise PlyError(f"{path}: vertex property {words[-1]!r} is a list; only scalar properties are supported")
            if len(words) != 3 or words[1] not in _TYPES:
                raise PlyError(f"{path}: bad property line {' '.join(words)!r}")
            props.append((words[2], _TYPES[words[1]]))
        else:
            raise PlyError(f"{path}: bad header line {' '.join(words)!r}")
    if fmt is None:
        raise PlyError(f"{path}: header has no format line")
    if count is None:
        raise PlyError(f"{path}: no 'vertex' element")
    if elements[0] != "vertex":
        raise PlyError(f"{path}: the 'vertex' element must come first (found {elements[0]!r} before it)")
    names = [name for name, _ in props]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise PlyError(f"{path}: duplicated vertex properties {duplicated}")
    if not props:
        raise PlyError(f"{path}: the vertex element has no properties")
    return fmt, count, np.dtype(props), len(elements) > 1


def _read_ascii(path: Path, body: bytes, count: int, dtype: np.dtype, trailing: bool) -> np.ndarray:
    lines = [line for line in body.decode("ascii", "replace").splitlines() if line.strip()]
    if len(lines) < count:
        raise PlyError(f"{path}: truncated: the header declares {count} vertices but only {len(lines)} lines follow")
    if len(lines) > count and not trailing:
        raise PlyError(
            f"{path}: {len(lines) - count} lines after the {count} declared vertices: the vertex count in the "
            "header does not match the data"
        )
    width = len(dtype.names)
    rows = [line.split() for line in lines[:count]]
    for i, row in enumerate(rows):
        if len(row) != width:
            raise PlyError(f"{path}: vertex {i} has {len(row)} values, the header declares {width} properties")
    try:
        values = np.array(rows, dtype=np.float64).reshape(count, width)
    except ValueError as exc:
        raise PlyError(f"{path}: non-numeric vertex value ({exc})") from exc
    table = np.empty(count, dtype=dtype)
    for j, name in enumerate(dtype.names):
        table[name] = values[:, j]
    return table


def write_vertices(path: str | os.PathLike, table: np.ndarray, *, ascii: bool = False) -> Path:
    """Write a structured array as the ``vertex`` element of a PLY file."""
    path = Path(path)
    names = {v: k for k, v in reversed(_TYPES.items())}  # first PLY name of each numpy code
    props = [f"property {names[table.dtype[n].str[1:]]} {n}" for n in table.dtype.names]
    fmt = "ascii" if ascii else "binary_little_endian"
    header = "\n".join(["ply", f"format {fmt} 1.0", f"element vertex {len(table)}", *props, "end_header"]) + "\n"
    with path.open("wb") as handle:
        handle.write(header.encode("ascii"))
        if ascii:
            # 9 significant digits reproduce any float32 exactly.
            formats = ["%d" if table.dtype[n].kind in "iu" else "%.9g" for n in table.dtype.names]
            columns = np.stack([table[n].astype(np.float64) for n in table.dtype.names], axis=1)
            np.savetxt(handle, columns, fmt=formats)
        else:
            handle.write(table.astype(table.dtype.newbyteorder("<")).tobytes())
    return path


def _columns(path: Path, table: np.ndarray, fields: tuple[str, ...], hint: str = "") -> np.ndarray:
    missing = [f for f in fields if f not in table.dtype.names]
    if missing:
        raise PlyError(f"{path}: missing vertex fields {missing}{hint}")
    values = np.stack([table[f].astype(np.float64) for f in fields], axis=1)
    bad = ~np.isfinite(values)
    if bad.any():
        named = {fields[j]: int(bad[:, j].sum()) for j in np.flatnonzero(bad.any(0))}
        raise PlyError(f"{path}: NaN or infinite values (field: count) {named}")
    return values


# ---------------------------------------------------------------------------------------- splats
def read_gaussians(path: str | os.PathLike) -> Gaussians:
    """Read a 3DGS PLY (binary or ascii) into activated ``Gaussians``.

    Colours above 1 or below 0 (possible for optimised f_dc) are clipped to [0, 1].
    """
    path = Path(path)
    table = read_vertices(path)
    hint = " (a coloured point cloud? use read_point_cloud)" if "red" in table.dtype.names else ""
    raw = _columns(path, table, GAUSSIAN_FIELDS, hint)
    rest_names = sorted((n for n in table.dtype.names if n.startswith("f_rest_")), key=lambda n: int(n[7:]))
    if rest_names != [f"f_rest_{i}" for i in range(len(rest_names))] or len(rest_names) % 3:
        raise PlyError(f"{path}: f_rest fields must be f_rest_0..f_rest_M-1 with M divisible by 3, got {rest_names}")
    if len(table) == 0:
        raise PlyError(f"{path}: no Gaussians (vertex count 0)")
    with np.errstate(over="ignore"):
        scales = np.exp(raw[:, 7:10])
    try:
        return Gaussians(
            positions=raw[:, 0:3],
            colours=np.clip(0.5 + SH_C0 * raw[:, 3:6], 0.0, 1.0),
            opacity=1.0 / (1.0 + np.exp(-raw[:, 6])),
            scales=scales,
            rotations=raw[:, 10:14],
            sh_rest=_columns(path, table, tuple(rest_names)) if rest_names else None,
        )
    except ValueError as exc:
        raise PlyError(f"{path}: {exc}") from exc


def write_gaussians(path: str | os.PathLike, gaussians: Gaussians, *, ascii: bool = False) -> Path:
    """Write ``Gaussians`` in the 3DGS PLY layout (normals zero, as the reference writes them)."""
    rest = gaussians.sh_rest if gaussians.sh_rest is not None else np.zeros((len(gaussians), 0), np.float32)
    opacity = np.clip(gaussians.opacity.astype(np.float64), _OPACITY_EPS, 1 - _OPACITY_EPS)
    columns = {
        **{name: gaussians.positions[:, i] for i, name in enumerate("xyz")},
        **{name: np.zeros(len(gaussians)) for name in ("nx", "ny", "nz")},
        **{f"f_dc_{i}": (gaussians.colours[:, i] - 0.5) / SH_C0 for i in range(3)},
        **{f"f_rest_{i}": rest[:, i] for i in range(rest.shape[1])},
        "opacity": np.log(opacity / (1 - opacity)),
        **{f"scale_{i}": np.log(gaussians.scales[:, i]) for i in range(3)},
        **{f"rot_{i}": gaussians.rotations[:, i] for i in range(4)},
    }
    table = np.empty(len(gaussians), dtype=[(name, "<f4") for name in columns])
    for name, values in columns.items():
        table[name] = values
    return write_vertices(path, table, ascii=ascii)


# ---------------------------------------------------------------------------------------- points
def read_point_cloud(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """A coloured point cloud PLY (x, y, z, red, green, blue) -> points (N, 3), colours (N, 3) in [0, 1].

    Integer colours are scaled by their type's maximum (255 for uchar); float colours must be in [0, 1].
    """
    path = Path(path)
    table = read_vertices(path)
    hint = " (a Gaussian splat file? use read_gaussians)" if "f_dc_0" in table.dtype.names else ""
    values = _columns(path, table, POINT_FIELDS, hint)
    kinds = {table.dtype[c] for c in POINT_FIELDS[3:]}
    if len(kinds) != 1:
        raise PlyError(f"{path}: red, green and blue have different types {sorted(str(k) for k in kinds)}")
    kind = kinds.pop()
    colours = values[:, 3:] / np.iinfo(kind).max if kind.kind in "iu" else values[:, 3:]
    if (colours < 0).any() or (colours > 1).any():
        raise PlyError(f"{path}: colours must be in [0, 1] (float) or non-negative integers")
    if len(table) == 0:
        raise PlyError(f"{path}: no points (vertex count 0)")
    return values[:, :3].astype(np.float32), colours.astype(np.float32)


def write_point_cloud(path: str | os.PathLike, points: np.ndarray, colours: np.ndarray, *, ascii: bool = False) -> Path:
    """Write points (N, 3) and colours (N, 3) (uint8, or float in [0, 1]) with uchar red/green/blue."""
    points = np.asarray(points, dtype=np.float32)
    colours = np.asarray(colours)
    if points.ndim != 2 or points.shape[1] != 3 or colours.shape != points.shape:
        raise ValueError(f"points and colours must both be (N, 3), got {points.shape} and {colours.shape}")
    if colours.dtype != np.uint8:
        colours = np.round(np.clip(colours.astype(np.float64), 0, 1) * 255).astype(np.uint8)
    table = np.empty(len(points), dtype=[(n, "<f4") for n in "xyz"] + [(n, "u1") for n in POINT_FIELDS[3:]])
    for i, name in enumerate(POINT_FIELDS):
        table[name] = points[:, i] if i < 3 else colours[:, i - 3]
    return write_vertices(path, table, ascii=ascii)
