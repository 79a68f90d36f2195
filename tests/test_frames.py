"""Pairing full frames with tracked boxes, and cropping them."""

from __future__ import annotations

from types import SimpleNamespace as NS

import numpy as np
import pytest

from ddclip_core.perception.frames import Box, FramePairer, crop, stamp_key


def header(sec: int, frame: str = "cam") -> NS:
    return NS(stamp=NS(sec=sec, nanosec=5), frame_id=frame)


def test_frames_and_boxes_pair_whichever_arrives_first():
    pairer = FramePairer(capacity=2)
    frame = np.zeros((10, 10, 3), np.uint8)
    assert pairer.add_frame(stamp_key(header(1)), frame) is None
    assert pairer.add_boxes(stamp_key(header(1)), "boxes-1") is frame  # frame first
    assert pairer.add_boxes(stamp_key(header(2)), "boxes-2") is None
    assert pairer.add_frame(stamp_key(header(2)), frame) == "boxes-2"  # boxes first
    assert pairer.add_boxes(stamp_key(header(3, "other")), "x") is None
    assert pairer.add_frame(stamp_key(header(3)), frame) is None  # another camera: no pair
    for sec in (4, 5, 6):
        pairer.add_frame(stamp_key(header(sec)), frame)
    assert pairer.unpaired_dropped == 2  # bounded: the oldest unpaired frames go


def test_crop_clamps_to_the_frame_and_refuses_slivers():
    rgb = np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)
    np.testing.assert_array_equal(crop(rgb, Box("t", 5.2, 2.0, 20.0, 15.5)), rgb[2:16, 5:20])
    assert crop(rgb, Box("t", -10, -10, 12, 12)).shape == (12, 12, 3)
    with pytest.raises(ValueError, match="box of track 't' leaves 4x20 pixels"):
        crop(rgb, Box("t", 26, 0, 40, 20))


def test_vision_msgs_detections_use_their_id_as_track():
    pytest.importorskip("ddclip.msg", reason="the ROS interfaces are not built: scripts/setup.sh builds them")
    from ddclip_ros.messages import boxes_from_vision_msgs

    def detection(track: str) -> NS:
        return NS(id=track, bbox=NS(center=NS(position=NS(x=50.0, y=40.0)), size_x=20.0, size_y=10.0))

    boxes = boxes_from_vision_msgs(NS(detections=[detection("7"), detection("")]))
    assert boxes == [Box("7", 40.0, 35.0, 60.0, 45.0)]
