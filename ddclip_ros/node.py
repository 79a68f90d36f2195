"""The ddclip perception node: object views in, shape embeddings, matches and language answers out.

Callbacks only convert messages and buffer views (TrackBuffer); a timer hands due tracks to the
single encoder thread (EncodeWorker), which batches them through the model and publishes. The
services run in their own callback group on a multi-threaded executor, so they answer while the
encoder is busy.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from ddclip.msg import (
    Match,
    ObjectMatches,
    ObjectPoints,
    ObjectView,
    QueryResult,
    ShapeEmbedding,
    TrackedDetections,
)
from ddclip.srv import Enroll, Forget, Query
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image

from ddclip_core import EmbeddingBank, LabelSet, load_model
from ddclip_core.enrolled import PREFIX, EnrolledObjects
from ddclip_core.gaussians import CloudEmbedder, load_gs_encoder
from ddclip_core.memory import ObjectMemory, SeenObject
from ddclip_core.retrieval import check_compatible
from ddclip_core.tracks import TrackBuffer, TrackPolicy

from .annotate import best_match, draw_detections
from .cloud_input import TrackClouds
from .frames import FramePairer, boxes_from_tracked, boxes_from_vision_msgs, crop, stamp_key
from .image_conversion import (
    ImageTooLarge,
    apply_mask,
    compressed_to_rgb,
    image_to_rgb,
    mask_to_bool,
    rgb_to_image,
)
from .node_process import exit_with_parent
from .parameters import NodeParameters, declare_parameters
from .worker import EncodeJob, EncodeWorker


def stamp_seconds(stamp: Any) -> float:
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def seconds_stamp(seconds: float) -> Time:
    whole = int(seconds)
    return Time(sec=whole, nanosec=min(999_999_999, round((seconds - whole) * 1e9)))


class DDClipNode(Node):
    def __init__(self) -> None:
        """With ``main_thread_encoder`` set, the caller runs ``self.worker.run()`` on its main thread (main does)."""
        super().__init__("ddclip")
        self.p: NodeParameters = declare_parameters(self)
        p = self.p
        self.model = load_model(p.weights or None, device=p.device, precision=p.precision)
        self.get_logger().info(
            f"model {self.model.weights_id} on {self.model.device} ({p.weights or 'RANDOM weights'})"
        )
        self.bank = EmbeddingBank.load(p.bank) if p.bank else None
        if self.bank is not None:
            check_compatible(self.bank, self.model)
        # Names given through ddclip/enroll, kept in memory_path (not in the bank folder, which stays read-only)
        self.enrolled = EnrolledObjects(self.model.embed_dim, self.model.weights_id, p.memory_path or None)
        self.bank = self.enrolled.into(self.bank)
        if len(self.enrolled):
            self.get_logger().info(f"{len(self.enrolled)} enrolled object(s) from {p.memory_path}")
        self.clouds = self._open_clouds()
        self.labels = LabelSet(p.labels, templates=p.templates) if p.labels else None
        self.label_embeddings = self.labels.embeddings(self.model) if self.labels else None
        self.buffer = TrackBuffer(
            TrackPolicy(
                max_views=p.max_views,
                min_views=p.min_views,
                reencode_after=p.reencode_after,
                timeout_s=p.timeout_s,
                max_tracks=p.max_tracks,
                max_age_s=p.max_age_s,
            )
        )
        self.memory = self._open_memory()
        self.lock = threading.Lock()  # guards buffer and memory (callbacks, timers, worker, services)
        self.bank_lock = threading.Lock()  # guards the bank: the worker searches it, enroll/forget edit it
        self.bad_inputs = 0
        self.too_large = 0  # of bad_inputs: images over max_pixels
        self._last_warning: dict[str, float] = {}
        self.worker = EncodeWorker(self._encode, self._deliver, queue_size=p.queue_size, max_batch=p.max_batch)

        # Reliable input (tests, replays) must not lose views in a burst; sensor data may.
        qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE) if p.reliable else qos_profile_sensor_data
        inputs = MutuallyExclusiveCallbackGroup()
        services = ReentrantCallbackGroup()
        self.embedding_pub = self.create_publisher(ShapeEmbedding, "ddclip/embeddings", 10)
        self.matches_pub = self.create_publisher(ObjectMatches, "ddclip/matches", 10)
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.annotated_pub = self.create_publisher(Image, "ddclip/annotated", 10) if p.annotate else None
        self.best: OrderedDict[str, tuple[str, float]] = OrderedDict()  # track -> best match, for annotation
        self.create_subscription(ObjectView, "ddclip/views", self._on_view, qos, callback_group=inputs)
        self.pairer = FramePairer()
        self.create_subscription(Image, "image", self._on_frame, qos, callback_group=inputs)
        self.create_subscription(CompressedImage, "image/compressed", self._on_compressed, qos, callback_group=inputs)
        self.create_subscription(
            TrackedDetections, "ddclip/detections", self._on_detections, qos, callback_group=inputs
        )
        if self.clouds is not None:
            self.create_subscription(ObjectPoints, "ddclip/points", self._on_points, qos, callback_group=inputs)
        try:  # what ROS detectors publish, where vision_msgs is installed
            from vision_msgs.msg import Detection2DArray

            self.create_subscription(
                Detection2DArray, "detections", self._on_detection_array, qos, callback_group=inputs
            )
        except ImportError:
            self.get_logger().info("vision_msgs not installed: only ddclip/TrackedDetections are read for frames")
        self.create_service(Query, "ddclip/query", self._on_query, callback_group=services)
        self.create_service(Forget, "ddclip/forget", self._on_forget, callback_group=services)
        self.create_service(Enroll, "ddclip/enroll", self._on_enroll, callback_group=services)
        # Views schedule their track at once; this tick only finds tracks gone quiet for timeout_s (encoded at
        # most a tenth of timeout_s late) and old ones to expire, so it need not wake the process 20 times a second.
        self.create_timer(min(0.5, max(0.05, p.timeout_s / 10)), self._schedule, callback_group=inputs)
        self.create_timer(1.0, self._publish_diagnostics, callback_group=services)
        if not p.main_thread_encoder:
            self.worker.start()
        self.get_logger().info("ready: views on ddclip/views, query service ddclip/query")

    def _open_clouds(self) -> TrackClouds | None:
        if not self.p.gs_encoder:
            return None
        encoder = load_gs_encoder(self.p.gs_encoder, device=self.model.device)
        if encoder.embed_dim != self.model.embed_dim:
            raise ValueError(
                f"GS encoder {self.p.gs_encoder} embeds into {encoder.embed_dim} dimensions, the model into "
                f"{self.model.embed_dim}: they must share one CLIP space"
            )
        self.get_logger().info(f"point clouds on ddclip/points, fused with weight {self.p.gaussian_weight}")
        return TrackClouds(CloudEmbedder(encoder, self.p.max_points), self.p.gaussian_weight, self.p.max_tracks)

    def _open_memory(self) -> ObjectMemory:
        path = Path(self.p.memory_path) if self.p.memory_path else None
        if path is not None and (path / "memory.json").is_file():
            return ObjectMemory.load(path, self.p.max_objects, weights_id=self.model.weights_id)
        return ObjectMemory(self.model.embed_dim, self.p.max_objects, weights_id=self.model.weights_id)

    # ------------------------------------------------------------------ input
    def _on_view(self, msg: ObjectView) -> None:
        try:
            rgb = image_to_rgb(msg.image, self.p.max_pixels)
            rgb = apply_mask(rgb, mask_to_bool(msg.mask, rgb.shape[:2]))
            if not msg.track_id:
                raise ValueError("empty track_id")
        except ValueError as exc:
            self._count_bad(exc)
            self._warn_once_a_second(
                f"dropped a view of track {msg.track_id!r}: {exc}", key=" ".join(str(exc).split()[:2])
            )
            return
        pose = msg.pose if msg.pose.header.frame_id else None
        with self.lock:
            self.buffer.add(msg.track_id, rgb, time.monotonic(), stamp=msg.header, pose=pose)
            if msg.track_ended:
                self.buffer.end(msg.track_id)
        self._schedule([msg.track_id])  # a track that just became due goes to the encoder now, not at the next tick

    def _on_points(self, msg: ObjectPoints) -> None:
        """A track's cloud encodes the track at once, fused with whatever views it has buffered."""
        try:
            cloud = self.clouds.add(msg.track_id, msg.cloud)
        except ValueError as exc:
            self._count_bad(exc)
            self._warn_once_a_second(f"dropped a point cloud of track {msg.track_id!r}: {exc}", "points")
            return
        with self.lock:
            track = self.buffer.get(msg.track_id)
            views, pose = (list(track.views), track.pose) if track is not None else ([], None)
        self.worker.submit(EncodeJob(msg.track_id, views, stamp=msg.header, pose=pose, points=cloud))

    def _on_frame(self, msg: Image) -> None:
        self._frame(msg.header, lambda: image_to_rgb(msg, self.p.max_pixels))

    def _on_compressed(self, msg: CompressedImage) -> None:
        self._frame(msg.header, lambda: compressed_to_rgb(msg, self.p.max_pixels))

    def _frame(self, header: Any, convert: Any) -> None:
        try:
            rgb = convert()
        except ValueError as exc:
            self._count_bad(exc)
            self._warn_once_a_second(f"dropped a frame: {exc}", key="frame " + " ".join(str(exc).split()[:2]))
            return
        with self.lock:
            waiting = self.pairer.add_frame(stamp_key(header), rgb)
        if waiting is not None:
            self._add_crops(header, rgb, *waiting)

    def _on_detections(self, msg: TrackedDetections) -> None:
        self._detections(msg.header, boxes_from_tracked(msg), list(msg.ended_tracks))

    def _on_detection_array(self, msg: Any) -> None:
        self._detections(msg.header, boxes_from_vision_msgs(msg), [])

    def _detections(self, header: Any, boxes: list, ended: list[str]) -> None:
        with self.lock:
            frame = self.pairer.add_boxes(stamp_key(header), (boxes, ended))
        if frame is not None:
            self._add_crops(header, frame, boxes, ended)

    def _add_crops(self, header: Any, rgb: np.ndarray, boxes: list, ended: list[str]) -> None:
        if self.annotated_pub is not None:  # before buffering: the caption is what was known when the frame came
            with self.lock:
                labels = {box.track_id: self.best[box.track_id] for box in boxes if box.track_id in self.best}
            self.annotated_pub.publish(rgb_to_image(draw_detections(rgb, boxes, labels), header))
        now = time.monotonic()
        for box in boxes:
            try:
                view = crop(rgb, box)
            except ValueError as exc:
                self.bad_inputs += 1
                self._warn_once_a_second(f"dropped a detection: {exc}", key="box")
                continue
            with self.lock:
                self.buffer.add(box.track_id, np.ascontiguousarray(view), now, stamp=header)
        with self.lock:
            for track_id in ended:
                self.buffer.end(track_id)
        self._schedule([box.track_id for box in boxes] + ended)

    def _count_bad(self, exc: ValueError) -> None:
        self.bad_inputs += 1
        self.too_large += isinstance(exc, ImageTooLarge)

    def _warn_once_a_second(self, message: str, key: str) -> None:
        """Log each kind of problem at most once a second, so a flood of bad input cannot flood the log."""
        now = time.monotonic()
        if now - self._last_warning.get(key, -1e9) >= 1.0:
            self._last_warning[key] = now
            self.get_logger().warning(message)

    def _schedule(self, track_ids: list[str] | None = None) -> None:
        """Hand due tracks to the encoder: ``track_ids`` only (those a message just updated), else all."""
        with self.lock:
            due = self.buffer.due(time.monotonic(), track_ids)
            jobs = [
                EncodeJob(
                    t.track_id,
                    list(t.views),
                    stamp=t.last_stamp,
                    pose=t.pose,
                    arrived=t.last_seen,
                    points=self.clouds.get(t.track_id) if self.clouds is not None else None,
                )
                for t in due
            ]
        for job in jobs:
            self.worker.submit(job)

    # ------------------------------------------------------------------ encoder thread
    def _encode(self, jobs: list[EncodeJob]) -> np.ndarray:
        if self.clouds is not None:
            return self.clouds.encode(jobs, self._encode_views)
        return self._encode_views([job.views for job in jobs])

    def _encode_views(self, objects: list[list[np.ndarray]]) -> np.ndarray:
        return self.model.encode_views(objects, batch_size=len(objects)).cpu().numpy()

    def _publish(self, publisher: Any, message: Any) -> None:
        """Publish from the encoder thread, which may still be finishing a batch when a signal has
        already shut the ROS context down: its results then go to the memory only, without a traceback."""
        if not self.context.ok():
            return
        try:
            publisher.publish(message)
        except Exception:
            if self.context.ok():
                raise

    def _deliver(self, jobs: list[EncodeJob], embeddings: np.ndarray) -> None:
        with self.bank_lock:
            has_bank = self.bank is not None and len(self.bank) > 0
            bank_matches = self.bank.search(embeddings, self.p.k_matches) if has_bank else None
        labels = self.labels.classify(self.model, embeddings, self.p.k_matches) if self.labels else None
        with self.lock:  # memory first: whoever hears the results can query them at once
            for job, vector in zip(jobs, embeddings, strict=True):
                header = job.stamp
                seen = SeenObject(
                    job.track_id,
                    stamp_seconds(header.stamp) if header else 0.0,
                    len(job.views),
                    frame_id=header.frame_id if header else "",
                    pose=_pose_list(job.pose),
                )
                self.memory.update(seen, vector)
        for i, job in enumerate(jobs):
            embedding = ShapeEmbedding(header=job.stamp, track_id=job.track_id, num_views=len(job.views))
            embedding.num_points = 0 if job.points is None else len(job.points[0])
            embedding.embedding = embeddings[i].astype(np.float32).tolist()
            embedding.weights_id = self.model.weights_id
            if job.pose is not None:
                embedding.pose = job.pose
            self._publish(self.embedding_pub, embedding)
            matches = ObjectMatches(header=job.stamp, track_id=job.track_id, num_views=len(job.views))
            matches.threshold = self.p.confidence_threshold
            if bank_matches is not None:
                matches.bank_matches = [
                    Match(id=m.id, name=m.name, category=m.metadata.get("category", ""), score=m.score)
                    for m in bank_matches[i]
                ]
            if labels is not None:
                matches.label_matches = [Match(id=label, name=label, score=score) for label, score in labels[i]]
            best = [m.score for m in (*matches.bank_matches[:1], *matches.label_matches[:1])]
            matches.confident = bool(best) and max(best) >= self.p.confidence_threshold
            if self.annotated_pub is not None and (caption := best_match(matches)) is not None:
                with self.lock:
                    self.best[job.track_id] = caption
                    self.best.move_to_end(job.track_id)
                    while len(self.best) > self.p.max_tracks:
                        self.best.popitem(last=False)
            self._publish(self.matches_pub, matches)

    # ------------------------------------------------------------------ services
    def _on_query(self, request: Query.Request, response: Query.Response) -> Query.Response:
        k = request.k or self.p.k_matches
        sources = request.sources or Query.Request.SOURCE_SEEN
        if not request.text.strip():
            response.success, response.message = False, "empty query text"
            return response
        if sources & Query.Request.SOURCE_BANK and self.bank is None:
            response.success, response.message = False, "no bank loaded (parameter 'bank')"
            return response
        text = self.model.encode_text(request.text).cpu().numpy()
        results = []
        if sources & Query.Request.SOURCE_SEEN:
            with self.lock:
                found = self.memory.search(text, k)
            for seen, score in found:
                result = QueryResult(source="seen", track_id=seen.track_id, name=seen.name, score=score)
                result.last_seen, result.num_views = seconds_stamp(seen.last_seen), seen.num_views
                result.pose.header.frame_id = seen.frame_id if seen.pose else ""
                if seen.pose:
                    _fill_pose(result.pose.pose, seen.pose)
                results.append(result)
        if sources & Query.Request.SOURCE_BANK:
            with self.bank_lock:
                found_in_bank = self.bank.search(text, k)[0] if len(self.bank) else []
            for match in found_in_bank:
                results.append(QueryResult(source="bank", id=match.id, name=match.name, score=match.score))
        results.sort(key=lambda r: -r.score)
        response.success, response.results = True, results[:k]
        response.message = f"{len(response.results)} result(s)"
        return response

    def _on_forget(self, request: Forget.Request, response: Forget.Response) -> Forget.Response:
        with self.lock:
            ids = None if request.all else list(request.track_ids)
            count = self.memory.forget(ids)
            self.buffer.forget(ids)
        if self.clouds is not None:
            self.clouds.forget(ids)
        if request.enrolled_ids:
            with self.bank_lock:
                count += self.enrolled.remove(self.bank, list(dict.fromkeys(request.enrolled_ids)))
                if self.bank is not None:  # other bank rows may be hidden too, until a restart
                    count += self.bank.remove([i for i in dict.fromkeys(request.enrolled_ids) if i in self.bank])
        response.success, response.forgotten = True, count
        response.message = f"forgot {count}"
        return response

    def _on_enroll(self, request: Enroll.Request, response: Enroll.Response) -> Enroll.Response:
        """Name an object (a tracked one's current views, or given images) so the bank recognises it."""
        name = request.name.strip()
        try:
            if not name:
                raise ValueError("empty name")
            if request.track_id:
                with self.lock:
                    track = self.buffer.get(request.track_id)
                    views = list(track.views) if track is not None else []
                if not views:
                    raise ValueError(f"no views of track {request.track_id!r} (unknown or forgotten)")
            elif request.images:
                views = [image_to_rgb(image, self.p.max_pixels) for image in request.images]
            else:
                raise ValueError("give a track_id or images")
        except ValueError as exc:
            response.success, response.message = False, str(exc)
            return response
        embedding = self.model.encode_views(views).cpu().numpy()
        item_id = PREFIX + name
        with self.bank_lock:  # enrolling a name again replaces its views
            self.bank = self.enrolled.add(self.bank, embedding, name, request.category)
        if request.track_id:
            with self.lock:
                if request.track_id in self.memory:
                    self.memory.name(request.track_id, name)
        response.success, response.id = True, item_id
        response.message = f"enrolled {name!r} from {len(views)} view(s)"
        return response

    # ------------------------------------------------------------------ diagnostics and shutdown
    def _publish_diagnostics(self) -> None:
        stats = self.worker.stats
        with self.lock:
            tracks = len(self.buffer)
            views = self.buffer.view_counts()
            values = {
                "queue_depth": self.worker.depth,
                "dropped_jobs": stats.dropped_jobs,
                "bad_inputs": self.bad_inputs,
                "too_large_images": self.too_large,
                "rejected_views": self.buffer.rejected_views,
                "tracks": tracks,
                "evicted_tracks": self.buffer.evicted,
                "mean_views_per_track": round(float(np.mean(views)), 2) if views else 0,
                "encoded_tracks": stats.encoded_tracks,
                "failed_batches": stats.failed_batches,
                "last_batch_size": stats.last_batch_size,
                "last_encode_ms": round(stats.last_encode_ms, 1),
                "last_view_to_result_ms": round(stats.last_total_ms, 1),
                "objects_in_memory": len(self.memory),
            }
        if self.clouds is not None:
            values["clouds_without_colour"] = self.clouds.colourless
        level = DiagnosticStatus.WARN if stats.dropped_jobs or stats.failed_batches else DiagnosticStatus.OK
        status = DiagnosticStatus(level=level, name="ddclip: encoder", hardware_id=str(self.model.device))
        status.message = "dropping or failing work" if level else "ok"
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics_pub.publish(array)

    def close(self) -> None:
        self.worker.stop()
        if self.p.memory_path:
            self.memory.save(self.p.memory_path)


def _pose_list(pose: Any) -> list[float]:
    if pose is None:
        return []
    p, q = pose.pose.position, pose.pose.orientation
    return [p.x, p.y, p.z, q.x, q.y, q.z, q.w]


def _fill_pose(target: Any, values: list[float]) -> None:
    p, q = target.position, target.orientation
    p.x, p.y, p.z, q.x, q.y, q.z, q.w = values


def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args)
    exit_with_parent()
    node, executor, spinner, failure = None, None, None, []
    try:
        node = DDClipNode()
        executor = MultiThreadedExecutor(num_threads=4)
        executor.add_node(node)
        if node.p.main_thread_encoder:
            spinner = threading.Thread(target=_spin, args=(executor, node.worker, failure), daemon=True)
            spinner.start()
            node.worker.run()
        else:
            executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.close()
        if spinner is not None:
            executor.shutdown(timeout_sec=5.0)
            spinner.join(timeout=5.0)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    if failure:
        raise failure[0]
    return 0


def _spin(executor: MultiThreadedExecutor, worker: EncodeWorker, failure: list[BaseException]) -> None:
    """The ROS side on its own thread; when it ends (a signal shut the context down), the encoder stops."""
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except BaseException as exc:  # re-raised in main: the node must not exit 0 after a crash
        failure.append(exc)
    finally:
        worker.stop()


if __name__ == "__main__":
    sys.exit(main())
