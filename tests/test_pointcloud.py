"""sensor_msgs/PointCloud2 <-> numpy: PCL layouts, offsets, padding, organised clouds, endianness, errors."""

from __future__ import annotations

import struct

import numpy as np
import pytest

pytest.importorskip("sensor_msgs", reason="ROS message packages not installed: scripts/setup.sh installs them")
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import PointCloud2, PointField

from ddclip_core.gaussians import lift_points
from ddclip_ros.pointcloud import CloudTooLarge, arrays_to_pointcloud, pointcloud_to_arrays

RNG = np.random.default_rng(0)
F32, F64, U8, U32, I16 = PointField.FLOAT32, PointField.FLOAT64, PointField.UINT8, PointField.UINT32, PointField.INT16


def field(name: str, offset: int, datatype: int) -> PointField:
    return PointField(name=name, offset=offset, datatype=datatype, count=1)


def pcl_xyzrgb(points: list[tuple[float, float, float]], rgb: list[tuple[int, int, int]]) -> PointCloud2:
    """Bytes laid out by hand the way PCL's PointXYZRGB is published: 32-byte points, xyz at 0/4/8,
    4 bytes of padding, the colour at 16 as bytes B, G, R, A (alpha 255, so the FLOAT32 is a NaN)."""
    data = b"".join(
        struct.pack("<fff", *p) + b"\x00" * 4 + bytes([b, g, r, 255]) + b"\x00" * 12
        for p, (r, g, b) in zip(points, rgb, strict=True)
    )
    return PointCloud2(
        height=1,
        width=len(points),
        fields=[field("x", 0, F32), field("y", 4, F32), field("z", 8, F32), field("rgb", 16, F32)],
        is_bigendian=False,
        point_step=32,
        row_step=32 * len(points),
        data=data,
        is_dense=True,
    )


def test_pcl_packed_rgb_layout_by_hand():
    points = [(1.0, 2.0, 3.0), (-0.5, 0.25, 8.0)]
    msg = pcl_xyzrgb(points, [(255, 0, 10), (1, 128, 254)])
    assert np.isnan(np.frombuffer(bytes(msg.data[16:20]), "<f4")[0])  # alpha 255: the float itself is a NaN
    cloud = pointcloud_to_arrays(msg)
    np.testing.assert_array_equal(cloud.points, np.array(points, np.float32))
    np.testing.assert_allclose(cloud.colours * 255, [[255, 0, 10], [1, 128, 254]], atol=1e-4)
    assert cloud.points.dtype == np.float32 and cloud.colours.dtype == np.float32
    assert not cloud.colour_missing and cloud.dropped == 0


def test_any_field_order_and_separate_rgb_fields_big_endian_float64_by_hand():
    # z first, then x, then r,g,b bytes, then y as big-endian doubles; 3 bytes of padding per point.
    fields = [field("z", 0, F64), field("x", 8, F64), field("r", 16, U8), field("g", 17, U8), field("b", 18, U8)]
    fields.append(field("y", 19, F64))
    rows = [((1.5, -2.0, 4.0), (9, 99, 199)), ((0.1, 0.2, 0.3), (0, 255, 7))]
    data = b"".join(
        struct.pack(">dd", z, x) + bytes(rgb) + struct.pack(">d", y) + b"\xee" * 3 for (x, y, z), rgb in rows
    )
    msg = PointCloud2(height=1, width=2, fields=fields, is_bigendian=True, point_step=30, row_step=60, data=data)
    cloud = pointcloud_to_arrays(msg)
    np.testing.assert_allclose(cloud.points, [[1.5, -2.0, 4.0], [0.1, 0.2, 0.3]], rtol=1e-7)
    np.testing.assert_allclose(cloud.colours * 255, [[9, 99, 199], [0, 255, 7]], atol=1e-4)


def test_packed_rgba_uint32_by_hand_in_both_byte_orders():
    for order, bigendian in (("<", False), (">", True)):
        value = (17 << 24) | (200 << 16) | (100 << 8) | 50  # A=17 R=200 G=100 B=50
        data = struct.pack(f"{order}fffI", 1.0, 2.0, 3.0, value)
        fields = [field("x", 0, F32), field("y", 4, F32), field("z", 8, F32), field("rgba", 12, U32)]
        msg = PointCloud2(
            height=1, width=1, fields=fields, is_bigendian=bigendian, point_step=16, row_step=16, data=data
        )
        cloud = pointcloud_to_arrays(msg)
        np.testing.assert_allclose(cloud.colours * 255, [[200, 100, 50]], atol=1e-4)
        np.testing.assert_array_equal(cloud.points, [[1.0, 2.0, 3.0]])


def test_organised_cloud_with_row_padding_drops_non_finite_points_in_row_major_order():
    grid = RNG.normal(size=(3, 4, 3)).astype(np.float32)
    colours = RNG.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    grid[0, 1, 2] = np.nan  # a missing return, as organised depth clouds mark it
    grid[2, 3, 0] = np.inf
    msg = arrays_to_pointcloud(grid, colours, row_pad=6)
    assert (msg.height, msg.width, msg.row_step) == (3, 4, 4 * msg.point_step + 6) and not msg.is_dense
    cloud = pointcloud_to_arrays(msg)
    keep = np.isfinite(grid).all(-1).reshape(-1)
    assert cloud.dropped == 2 and len(cloud.points) == 10
    np.testing.assert_array_equal(cloud.points, grid.reshape(-1, 3)[keep])
    np.testing.assert_allclose(cloud.colours * 255, colours.reshape(-1, 3)[keep], atol=1e-4)
    # is_dense=True is a claim, not a guarantee: NaN points are dropped all the same.
    msg.is_dense = True
    assert pointcloud_to_arrays(msg).dropped == 2


@pytest.mark.parametrize("colour", ["rgb", "rgba", "fields"])
@pytest.mark.parametrize("xyz_dtype", ["float32", "float64"])
@pytest.mark.parametrize("big_endian", [False, True])
def test_round_trip_through_ros_serialisation(colour, xyz_dtype, big_endian):
    points = RNG.normal(size=(50, 3)).astype(np.float32)
    colours = RNG.integers(0, 256, (50, 3), dtype=np.uint8)
    msg = arrays_to_pointcloud(
        points, colours, colour=colour, xyz_dtype=xyz_dtype, big_endian=big_endian, point_pad=5, frame_id="camera"
    )
    wire = serialize_message(msg)
    back = deserialize_message(wire, PointCloud2)
    assert back.header.frame_id == "camera" and back.point_step == msg.point_step and len(back.data) == len(msg.data)
    cloud = pointcloud_to_arrays(back)
    np.testing.assert_array_equal(cloud.points, points)
    np.testing.assert_allclose(cloud.colours, colours / 255.0, atol=1e-6)
    assert cloud.dropped == 0 and not cloud.colour_missing


def test_float_colours_and_no_colour():
    points = RNG.normal(size=(6, 3)).astype(np.float32)
    colours = RNG.random((6, 3)).astype(np.float32)
    cloud = pointcloud_to_arrays(arrays_to_pointcloud(points, colours))
    np.testing.assert_allclose(cloud.colours, colours, atol=0.5 / 255 + 1e-6)  # 8-bit quantised
    plain = arrays_to_pointcloud(points, None)
    assert [f.name for f in plain.fields] == ["x", "y", "z"]
    grey = pointcloud_to_arrays(plain)
    assert grey.colour_missing and grey.colours.shape == (6, 3) and (grey.colours == 0.5).all()
    # Only r and g: not a colour, so grey too (half a colour would tint the Gaussians).
    partial = arrays_to_pointcloud(points, colours, colour="fields")
    partial.fields = [f for f in partial.fields if f.name != "b"]
    assert pointcloud_to_arrays(partial).colour_missing


def test_empty_cloud_and_lifting_the_result():
    empty = pointcloud_to_arrays(arrays_to_pointcloud(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)))
    assert empty.points.shape == (0, 3) and empty.colours.shape == (0, 3)
    # The conversion's output is what the GS-CLIP lift takes.
    points = RNG.normal(size=(40, 3)).astype(np.float32)
    points[3] = np.nan
    cloud = pointcloud_to_arrays(arrays_to_pointcloud(points, RNG.integers(0, 256, (40, 3), dtype=np.uint8)))
    gaussians = lift_points(cloud.points, cloud.colours)
    assert len(gaussians.positions) == 39


def _valid() -> PointCloud2:
    return arrays_to_pointcloud(RNG.normal(size=(4, 3)).astype(np.float32), RNG.integers(0, 256, (4, 3), np.uint8))


def _with(**changes) -> PointCloud2:
    msg = _valid()
    for name, value in changes.items():
        setattr(msg, name, value)
    return msg


def _retyped(name: str, datatype: int) -> PointCloud2:
    msg = _valid()
    msg.fields = [field(f.name, f.offset, datatype if f.name == name else f.datatype) for f in msg.fields]
    return msg


@pytest.mark.parametrize(
    ("msg", "match"),
    [
        (_with(data=bytes(_valid().data)[:-1]), r"truncated: 63 bytes, expected row_step x height = 64 x 1 = 64"),
        (_with(data=bytes(_valid().data) + b"\x00"), "65 bytes, more than row_step x height = 64"),
        (_with(fields=[field("x", 0, F32), field("y", 4, F32)]), r"no z field \(fields: x, y\)"),
        (_with(fields=[]), r"no x/y/z field \(fields: none\)"),
        (_retyped("y", I16), "field 'y' has unsupported datatype INT16 \\(supported: FLOAT32/FLOAT64\\)"),
        (_retyped("rgb", F64), "field 'rgb' has unsupported datatype FLOAT64 \\(supported: FLOAT32/UINT32\\)"),
        (_retyped("x", 42), "field 'x' has unsupported datatype unknown datatype 42"),
        (_with(point_step=10, row_step=40), "field 'z' at offset 8 \\(4 bytes\\) overruns point_step 10"),
        (_with(row_step=10), "row_step 10 is smaller than width x point_step = 4 x 16"),
        (_with(point_step=0), "point_step must be positive"),
        (_with(fields=[field("x", 0, F32), field("x", 4, F32), field("z", 8, F32)]), "two fields named 'x'"),
    ],
)
def test_bad_clouds_give_clear_errors(msg, match):
    with pytest.raises(ValueError, match=match):
        pointcloud_to_arrays(msg)


def test_separate_colour_fields_must_be_bytes_and_size_limit():
    msg = arrays_to_pointcloud(np.zeros((2, 3), np.float32), np.zeros((2, 3), np.uint8), colour="fields")
    msg.fields = [field(f.name, f.offset, F32 if f.name == "g" else f.datatype) for f in msg.fields]
    with pytest.raises(ValueError, match="field 'g' has unsupported datatype FLOAT32 \\(supported: UINT8\\)"):
        pointcloud_to_arrays(msg)
    with pytest.raises(CloudTooLarge, match="point cloud of 4x1 points exceeds 3 points"):
        pointcloud_to_arrays(_valid(), max_points=3)


def test_optical_frame_clouds_are_turned_to_z_up():
    # A level camera looking along the body's x axis: a point 2 m ahead, 1 m left and 0.5 m up is at
    # optical (x right, y down, z forward) = (1, -0.5, 2) -> body (x forward, y left, z up) = (2, -1, 0.5).
    msg = arrays_to_pointcloud(np.array([[1.0, -0.5, 2.0]], np.float32), np.zeros((1, 3), np.uint8),
                               frame_id="head_camera_color_optical_frame")  # fmt: skip
    cloud = pointcloud_to_arrays(msg)
    assert cloud.turned_from_optical
    np.testing.assert_allclose(cloud.points, [[2.0, -1.0, 0.5]])
    body = pointcloud_to_arrays(arrays_to_pointcloud(np.array([[1.0, -0.5, 2.0]], np.float32), frame_id="base_link"))
    assert not body.turned_from_optical and body.points.tolist() == [[1.0, -0.5, 2.0]]
