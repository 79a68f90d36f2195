"""sensor_msgs/PointCloud2 <-> numpy (points (N, 3) float32, colours (N, 3) in [0, 1]) for GS-CLIP.

No sensor_msgs_py (not installable from PyPI): the fields are read through a numpy structured dtype
built from the message's own layout, so any field offsets, point_step padding, row_step padding,
organised (height > 1) clouds and either byte order work without copying field by field.

Colour, in order of preference:
- a packed ``rgb`` or ``rgba`` field, FLOAT32 or UINT32. PCL stores the bytes B, G, R, A in memory
  (little-endian uint32 0xAARRGGBB) and publishes ``rgb`` as FLOAT32 by reinterpreting those bits, so the
  four bytes are always read as a uint32 in the message's byte order, never as a float: with alpha 255
  the float is a NaN, and float arithmetic could change its bits.
- separate ``r``, ``g``, ``b`` UINT8 fields.
- none: mid grey, and ``colour_missing`` is set so the caller can warn (a grey cloud still embeds, but
  GS-CLIP was trained on coloured Gaussians).

Frame: the GS encoder takes clouds with z up (``ddclip_core.gaussians.prepare_cloud``). A cloud in a
camera optical frame (REP-103: a frame_id ending in ``_optical_frame``, x right, y down, z forward) is
turned to the matching body axes (x forward, y left, z up); this assumes a level camera (no tf lookup
here: publish clouds in a gravity-aligned frame, e.g. base_link or map, for a tilted one). Other
frames are taken as z up.

Points with a NaN or infinite coordinate are dropped whatever ``is_dense`` says: organised clouds mark
missing returns that way, and a driver that claims is_dense is not trusted with the encoder's input.
Every problem is a ValueError that names it, so the node can log, count and drop the message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# sensor_msgs/PointField datatype constants -> numpy type (byte order added per message).
DATATYPES: dict[int, np.dtype] = {
    1: np.dtype(np.int8),
    2: np.dtype(np.uint8),
    3: np.dtype(np.int16),
    4: np.dtype(np.uint16),
    5: np.dtype(np.int32),
    6: np.dtype(np.uint32),
    7: np.dtype(np.float32),
    8: np.dtype(np.float64),
}
DATATYPE_NAMES = {1: "INT8", 2: "UINT8", 3: "INT16", 4: "UINT16", 5: "INT32", 6: "UINT32", 7: "FLOAT32", 8: "FLOAT64"}
FLOAT32, FLOAT64, UINT8, UINT32 = 7, 8, 2, 6
MAX_POINTS = 20_000_000  # refuse before converting: ~0.5 GB of xyz+rgb float32 arrays
GREY = 0.5
# REP-103 optical axes (x right, y down, z forward) -> body axes (x forward, y left, z up): rows are the
# body axes written in optical coordinates.
OPTICAL_TO_BODY = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]], np.float32)


class CloudTooLarge(ValueError):
    """A cloud over the point limit: refused before its points are converted."""


@dataclass(frozen=True)
class CloudArrays:
    """The finite points of a PointCloud2 and their colours, row-major over (height, width)."""

    points: np.ndarray  # (N, 3) float32
    colours: np.ndarray  # (N, 3) float32 in [0, 1]
    colour_missing: bool  # no rgb/rgba or r,g,b fields: colours are grey
    dropped: int  # points dropped for a NaN or infinite coordinate
    turned_from_optical: bool = False  # the frame was a camera optical frame: points turned to z up


def is_optical_frame(frame_id: str) -> bool:
    return frame_id.rstrip("/").endswith("_optical_frame")


def _fields(msg: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for field in msg.fields:
        if field.name in fields:
            raise ValueError(f"PointCloud2 has two fields named {field.name!r}")
        fields[field.name] = field
    return fields


def _layout(name: str, field: Any, point_step: int, allowed: tuple[int, ...], order: str) -> tuple[np.dtype, int]:
    datatype = int(field.datatype)
    if datatype not in allowed:
        supported = "/".join(DATATYPE_NAMES[a] for a in allowed)
        got = DATATYPE_NAMES.get(datatype, f"unknown datatype {datatype}")
        raise ValueError(f"PointCloud2 field {name!r} has unsupported datatype {got} (supported: {supported})")
    dtype = DATATYPES[datatype].newbyteorder(order)
    offset = int(field.offset)
    if offset + dtype.itemsize > point_step:
        raise ValueError(
            f"PointCloud2 field {name!r} at offset {offset} ({dtype.itemsize} bytes) overruns point_step {point_step}"
        )
    # count > 1 (an array field): the first element is the value; count 0 is read as 1, as PCL does.
    return dtype, offset


def _data(msg: Any) -> np.ndarray:
    data = msg.data
    if isinstance(data, (list, tuple)):
        return np.asarray(data, dtype=np.uint8)
    return np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)


def pointcloud_to_arrays(msg: Any, max_points: int = MAX_POINTS) -> CloudArrays:
    """A sensor_msgs/PointCloud2 -> its finite points (N, 3) float32 and colours (N, 3) in [0, 1]."""
    height, width = int(msg.height), int(msg.width)
    point_step, row_step = int(msg.point_step), int(msg.row_step)
    if height * width > max_points:
        raise CloudTooLarge(f"point cloud of {width}x{height} points exceeds {max_points} points")
    fields = _fields(msg)
    missing = [axis for axis in "xyz" if axis not in fields]
    if missing:
        names = ", ".join(fields) or "none"
        raise ValueError(f"PointCloud2 has no {'/'.join(missing)} field (fields: {names})")
    if point_step <= 0:
        raise ValueError(f"PointCloud2 point_step must be positive, got {point_step}")
    if row_step < width * point_step:
        raise ValueError(f"PointCloud2 row_step {row_step} is smaller than width x point_step = {width} x {point_step}")
    order = ">" if msg.is_bigendian else "<"
    spec: dict[str, list] = {"names": [], "formats": [], "offsets": []}

    def read(name: str, allowed: tuple[int, ...], as_name: str | None = None) -> None:
        dtype, offset = _layout(name, fields[name], point_step, allowed, order)
        if as_name is not None:  # a packed colour: read its four bytes as a uint32, whatever the datatype
            dtype = np.dtype(np.uint32).newbyteorder(order)
        spec["names"].append(as_name or name)
        spec["formats"].append(dtype)
        spec["offsets"].append(offset)

    for axis in "xyz":
        read(axis, (FLOAT32, FLOAT64))
    packed = next((n for n in ("rgb", "rgba") if n in fields), None)
    separate = packed is None and all(c in fields for c in "rgb")
    if packed is not None:
        read(packed, (FLOAT32, UINT32), as_name="packed")
    elif separate:
        for channel in "rgb":
            read(channel, (UINT8,))
    colour_missing = packed is None and not separate
    layout = np.dtype({**spec, "itemsize": point_step})

    data = _data(msg)
    expected = row_step * height
    if data.size < expected:
        raise ValueError(
            f"PointCloud2 data is truncated: {data.size} bytes, expected row_step x height = "
            f"{row_step} x {height} = {expected}"
        )
    if data.size > expected:
        raise ValueError(f"PointCloud2 data has {data.size} bytes, more than row_step x height = {expected}")

    optical = is_optical_frame(str(getattr(getattr(msg, "header", None), "frame_id", "")))
    if height * width == 0:
        empty = np.zeros((0, 3), np.float32)
        return CloudArrays(empty, empty.copy(), colour_missing, 0, optical)
    # Cut each row's padding (row_step beyond width x point_step), then read every point at once.
    rows = data[:expected].reshape(height, row_step)[:, : width * point_step]
    cloud = np.ascontiguousarray(rows).view(layout).reshape(-1)
    # A float64 coordinate beyond float32's range becomes inf here, and is dropped with the NaNs.
    with np.errstate(over="ignore"):
        points = np.stack([cloud[a].astype(np.float32) for a in "xyz"], axis=1)
    if packed is not None:
        value = cloud["packed"].astype(np.uint32)
        colours = np.stack([(value >> 16) & 0xFF, (value >> 8) & 0xFF, value & 0xFF], axis=1)
    elif separate:
        colours = np.stack([cloud[c] for c in "rgb"], axis=1)
    else:
        colours = None
    finite = np.isfinite(points).all(axis=1)
    points = points[finite]
    if optical:
        points = points @ OPTICAL_TO_BODY.T
    if colours is None:
        colours = np.full((len(points), 3), GREY, np.float32)
    else:
        colours = colours[finite].astype(np.float32) / 255.0
    return CloudArrays(points, colours, colour_missing, int((~finite).sum()), optical)


def arrays_to_pointcloud(
    points: np.ndarray,
    colours: np.ndarray | None = None,
    *,
    colour: str = "rgb",
    xyz_dtype: str = "float32",
    big_endian: bool = False,
    point_pad: int = 0,
    row_pad: int = 0,
    frame_id: str = "",
    stamp: Any = None,
) -> Any:
    """numpy -> sensor_msgs/PointCloud2, for tests and replay tools.

    points: (N, 3) for an unorganised cloud (height 1) or (H, W, 3) for an organised one; NaN allowed.
    colours: the same leading shape with 3 channels, uint8 or floats in [0, 1]; None (or colour "none")
    writes no colour field. colour: "rgb" (packed FLOAT32, as PCL publishes PointXYZRGB), "rgba" (packed
    UINT32) or "fields" (r, g, b UINT8). xyz_dtype: "float32" or "float64". point_pad / row_pad: extra
    bytes after each point / row, as aligned PCL types and some drivers write (filled with 0xEE).
    """
    from sensor_msgs.msg import PointCloud2, PointField

    pts = np.asarray(points)
    if pts.ndim not in (2, 3) or pts.shape[-1] != 3:
        raise ValueError(f"points must be (N, 3) or (H, W, 3), got {pts.shape}")
    grid = pts.reshape(1, -1, 3) if pts.ndim == 2 else pts
    height, width = grid.shape[:2]
    if xyz_dtype not in ("float32", "float64"):
        raise ValueError(f"xyz_dtype must be float32 or float64, got {xyz_dtype!r}")
    if colour not in ("rgb", "rgba", "fields", "none"):
        raise ValueError(f"colour must be rgb, rgba, fields or none, got {colour!r}")
    if point_pad < 0 or row_pad < 0:
        raise ValueError("point_pad and row_pad must be >= 0")
    if colours is None:
        colour = "none"
    order = ">" if big_endian else "<"

    xyz = np.dtype(xyz_dtype).newbyteorder(order)
    names = ["x", "y", "z"]
    formats: list[np.dtype] = [xyz, xyz, xyz]
    offsets = [0, xyz.itemsize, 2 * xyz.itemsize]
    datatypes = [FLOAT32 if xyz_dtype == "float32" else FLOAT64] * 3
    end = 3 * xyz.itemsize
    rgb8 = None
    if colour != "none":
        cols = np.asarray(colours)
        if cols.shape != grid.shape and cols.shape != pts.shape:
            raise ValueError(f"colours {cols.shape} do not match points {pts.shape}")
        cols = cols.reshape(grid.shape)
        if cols.dtype.kind in "iu":
            rgb8 = cols.astype(np.uint8)
        else:
            rgb8 = np.round(np.clip(cols, 0, 1) * 255).astype(np.uint8)
        if colour == "fields":
            channels = [(c, np.dtype(np.uint8), end + i, UINT8) for i, c in enumerate("rgb")]
            end += 3
        else:
            end = -(-end // 4) * 4  # PCL aligns the packed colour to 4 bytes
            channels = [(colour, np.dtype(np.uint32).newbyteorder(order), end, FLOAT32 if colour == "rgb" else UINT32)]
            end += 4
        for name, dtype, offset, datatype in channels:
            names.append(name)
            formats.append(dtype)
            offsets.append(offset)
            datatypes.append(datatype)
    point_step = end + point_pad
    layout = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": point_step})

    row_bytes = width * point_step
    buffer = np.full((height, row_bytes + row_pad), 0xEE, np.uint8)
    cloud = buffer[:, :row_bytes].copy().view(layout).reshape(height, width)
    for i, axis in enumerate("xyz"):
        cloud[axis] = grid[..., i]
    if rgb8 is not None:
        r, g, b = (rgb8[..., i] for i in range(3))
        if colour == "fields":
            cloud["r"], cloud["g"], cloud["b"] = r, g, b
        else:  # 0xAARRGGBB with alpha 255: bytes B, G, R, A in a little-endian message, as PCL writes them
            value = (np.uint32(0xFF) << 24) | (r.astype(np.uint32) << 16) | (g.astype(np.uint32) << 8) | b
            cloud[colour] = value
    buffer[:, :row_bytes] = cloud.view(np.uint8).reshape(height, row_bytes)

    msg = PointCloud2()
    msg.header.frame_id = frame_id
    if stamp is not None:
        msg.header.stamp = stamp
    msg.height, msg.width = height, width
    msg.fields = [
        PointField(name=n, offset=o, datatype=d, count=1) for n, o, d in zip(names, offsets, datatypes, strict=True)
    ]
    msg.is_bigendian = big_endian
    msg.point_step = point_step
    msg.row_step = row_bytes + row_pad
    msg.data = buffer.tobytes()
    msg.is_dense = bool(np.isfinite(grid).all())
    return msg
