"""The object memory for rviz: one text marker per remembered object that has a pose, in the pose's frame."""

from __future__ import annotations

from collections.abc import Iterable

from geometry_msgs.msg import Point, Quaternion
from visualization_msgs.msg import Marker, MarkerArray

from ddclip_core.memory import SeenObject

NAMESPACE = "ddclip"


def memory_markers(objects: Iterable[SeenObject], limit: int = 1000) -> MarkerArray:
    """A whole picture of the memory: DELETEALL, then the ``limit`` most recently seen posed objects.

    Sent whole (and latched), so rviz and late subscribers always see exactly what is remembered, and
    forgotten objects disappear. Stamps are zero, "the latest transform": a remembered pose can be older
    than any TF buffer, and its frame is a fixed one (map, odom) where this is what is meant.
    """
    array = MarkerArray(markers=[Marker(ns=NAMESPACE, action=Marker.DELETEALL)])
    posed = [seen for seen in objects if seen.pose is not None][-limit:]
    for seen in posed:
        marker = Marker(ns=NAMESPACE, id=seen.marker_id, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD)
        marker.header.frame_id = seen.pose.frame_id
        marker.pose.position = Point(x=seen.pose.position[0], y=seen.pose.position[1], z=seen.pose.position[2])
        marker.pose.orientation = Quaternion(x=0.0, y=0.0, z=0.0, w=1.0)
        marker.scale.z = 0.08
        marker.color.r = marker.color.g = marker.color.b = marker.color.a = 1.0
        score = f" {seen.names[0][1]:.2f}" if seen.names and not seen.name else ""
        marker.text = f"{seen.label}{score}"
        array.markers.append(marker)
    return array
