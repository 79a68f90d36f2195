"""ROS messages <-> the engine's plain values (headers, poses, boxes, results, query hits)."""

from __future__ import annotations

from typing import Any

import numpy as np
from builtin_interfaces.msg import Time
from ddclip.msg import Match, ObjectMatches, QueryResult, ShapeEmbedding
from geometry_msgs.msg import PoseStamped
from std_msgs.msg import Header as HeaderMsg

from ddclip_core.perception import Box, ObjectResult, QueryHit
from ddclip_core.stamped import Header, Pose, Stamp


def stamp_in(msg: Any) -> Stamp:
    return Stamp(int(msg.sec), int(msg.nanosec))


def stamp_out(stamp: Stamp) -> Time:
    return Time(sec=stamp.sec, nanosec=stamp.nanosec)


def header_in(msg: Any) -> Header:
    return Header(str(msg.frame_id), stamp_in(msg.stamp))


def header_out(header: Header) -> HeaderMsg:
    return HeaderMsg(frame_id=header.frame_id, stamp=stamp_out(header.stamp))


def pose_in(msg: Any) -> Pose | None:
    """A geometry_msgs/PoseStamped with its own frame and stamp; None when its frame_id is empty (unknown)."""
    if not msg.header.frame_id:
        return None
    p, q = msg.pose.position, msg.pose.orientation
    return Pose(msg.header.frame_id, stamp_in(msg.header.stamp), (p.x, p.y, p.z), (q.x, q.y, q.z, q.w))


def pose_out(pose: Pose | None) -> PoseStamped:
    """The pose in its own frame with its own stamp; an empty frame_id when unknown."""
    msg = PoseStamped()
    if pose is None:
        return msg
    msg.header = HeaderMsg(frame_id=pose.frame_id, stamp=stamp_out(pose.stamp))
    p, q = msg.pose.position, msg.pose.orientation
    p.x, p.y, p.z = pose.position
    q.x, q.y, q.z, q.w = pose.orientation
    return msg


def boxes_from_tracked(msg: Any) -> list[Box]:
    """ddclip/TrackedDetections -> boxes."""
    return [Box(b.track_id, b.x_min, b.y_min, b.x_max, b.y_max) for b in msg.boxes]


def boxes_from_vision_msgs(msg: Any) -> list[Box]:
    """vision_msgs/Detection2DArray -> boxes; the detection's ``id`` is its track id."""
    boxes = []
    for detection in msg.detections:
        if not detection.id:
            continue  # untracked detections cannot be accumulated over views
        centre, w, h = detection.bbox.center.position, detection.bbox.size_x, detection.bbox.size_y
        boxes.append(Box(detection.id, centre.x - w / 2, centre.y - h / 2, centre.x + w / 2, centre.y + h / 2))
    return boxes


def result_messages(result: ObjectResult) -> tuple[ShapeEmbedding, ObjectMatches]:
    header = header_out(result.header)
    embedding = ShapeEmbedding(header=header, track_id=result.track_id, num_views=result.num_views)
    embedding.num_points = result.num_points
    embedding.embedding = result.embedding.astype(np.float32).tolist()
    embedding.weights_id = result.embedding_id
    embedding.pose = pose_out(result.pose)
    matches = ObjectMatches(header=header, track_id=result.track_id, num_views=result.num_views)
    matches.threshold = result.threshold
    matches.confident = result.confident
    matches.bank_matches = [
        Match(id=m.id, name=m.name, category=str(m.metadata.get("category", "")), score=m.score)
        for m in result.bank_matches
    ]
    matches.label_matches = [Match(id=label, name=label, score=score) for label, score in result.label_matches]
    return embedding, matches


def hit_message(hit: QueryHit) -> QueryResult:
    result = QueryResult(source=hit.source, track_id=hit.track_id, id=hit.id, name=hit.name, score=hit.score)
    result.category = hit.category
    result.last_seen, result.first_seen = stamp_out(hit.last_seen), stamp_out(hit.first_seen)
    result.num_views, result.sightings = hit.num_views, hit.sightings
    result.best_matches = [Match(id=name, name=name, score=score) for name, score in hit.names]
    result.pose = pose_out(hit.pose)
    return result
