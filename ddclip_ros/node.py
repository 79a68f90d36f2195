"""The ddclip perception node: a thin ROS 2 adapter around ddclip_core's Perception engine.

It declares the parameters, converts messages into engine calls and the engine's results back into
messages; all logic (buffering, scheduling, encoding on one worker thread, memory, matching, queries,
enrolment) is in ``ddclip_core.perception``. No exception in a callback or service ends the node: bad
input is logged (at most once a second per kind), counted in /diagnostics and dropped; a failing
request answers ``success=false``. The node exits on a signal, or at start-up with one fatal line.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import rclpy
from ddclip.msg import ObjectMatches, ObjectPoints, ObjectView, ShapeEmbedding, TrackedDetections
from ddclip.srv import Enroll, Forget, Query
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image
from visualization_msgs.msg import MarkerArray

from ddclip_core.perception import ObjectResult, QueryRequest, RequestError
from ddclip_core.stamped import Stamp

from .annotate import draw_detections
from .dds_profile import use_image_profile
from .executors import GroupExecutor, ignore_late_signals, spin_on_thread, spin_until_shutdown
from .image_conversion import ImageTooLarge, apply_mask, compressed_to_rgb, image_to_rgb, mask_to_bool, rgb_to_image
from .markers import memory_markers
from .messages import (
    boxes_from_tracked,
    boxes_from_vision_msgs,
    header_in,
    header_out,
    hit_message,
    pose_in,
    result_messages,
    stamp_in,
)
from .node_process import exit_with_parent
from .parameters import SETTINGS, NodeParameters, declare_parameters, queue_depth
from .pointcloud import pointcloud_to_arrays


class DDClipNode(Node):
    def __init__(self, dds_profile: str = "") -> None:
        """With ``main_thread_encoder`` set, the caller runs ``self.engine.run_worker()`` on its main thread.
        dds_profile: what Fast DDS was configured with (``use_image_profile``), for the ready line."""
        super().__init__("ddclip")
        self.p: NodeParameters = declare_parameters(self)
        self.max_pixels, self.max_view_pixels = self.p.adapter.max_pixels, self.p.adapter.max_view_pixels
        clock = lambda: stamp_in(self.get_clock().now().to_msg())  # noqa: E731 - ROS time: sim time under use_sim_time
        from ddclip_core.perception import open_perception  # after the parameters: a bad one is refused at once

        self.engine = open_perception(self.p.config, self.p.settings, self._publish_results, clock)
        model = self.engine.model
        self.get_logger().info(
            f"model {model.weights_id} on {model.device} ({model.weights_source or 'RANDOM weights'}); "
            f"precision {model.precision} ({model.precision_reason})"
        )
        if model.weights_source is None:
            self.get_logger().warning("allow_random_weights is set: RANDOM weights, names and scores mean nothing")
        if len(self.engine.enrolled):
            self.get_logger().info(f"{len(self.engine.enrolled)} enrolled object(s) from {self.p.config.memory_path}")
        self._last_warning: dict[str, float] = {}

        adapter = self.p.adapter
        if "reliable_queue_mb" in getattr(self, "_parameter_overrides", {}):
            self.get_logger().warning("reliable_queue_mb is not used: it is input_queue_mb now (views in both QoS)")
        # Views (crops, one message per object: a tracker sends a burst of them per frame) and detections
        # must not be lost in a burst, best effort or not: sensor data's depth of 5 lost half of a burst of
        # 12 views. Bounded by bytes too: full frames are large. Best-effort frames keep sensor data's depth:
        # the newest frame is worth more than one that waited.
        depths = {"views": queue_depth(adapter, adapter.max_view_pixels)}
        depths["frames"] = queue_depth(adapter, adapter.max_pixels)
        reliability = ReliabilityPolicy.RELIABLE if adapter.reliable else ReliabilityPolicy.BEST_EFFORT
        input_qos = {k: QoSProfile(depth=d, reliability=reliability) for k, d in depths.items()}
        input_qos["clouds"] = input_qos["views"]
        if not adapter.reliable:  # a track's cloud comes now and then: the newest counts, as for frames
            input_qos["frames"] = input_qos["clouds"] = qos_profile_sensor_data
        # Services run on an executor of their own (``executors``): everything else on the main one.
        inputs, services = MutuallyExclusiveCallbackGroup(), MutuallyExclusiveCallbackGroup()
        self.service_group = services
        self.embedding_pub = self.create_publisher(ShapeEmbedding, "ddclip/embeddings", 10)
        self.matches_pub = self.create_publisher(ObjectMatches, "ddclip/matches", 10)
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.annotated_pub = self.create_publisher(Image, "ddclip/annotated", 10) if adapter.annotate else None
        latched = QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
        )
        self.markers_pub = self.create_publisher(MarkerArray, "ddclip/objects", latched)
        self._markers_due = threading.Event()
        self._markers_due.set()  # what was remembered before a restart, at once
        self.engine.on_memory_change = lambda *_: self._markers_due.set()
        if self.annotated_pub is not None:
            self.engine.frame_listener = self._annotate

        def subscribe(kind: Any, topic: str, callback: Callable[[Any], None], images: str = "views") -> Any:
            qos = input_qos[images]
            return self.create_subscription(kind, topic, self._guard(callback), qos, callback_group=inputs)

        listening = [subscribe(ObjectView, "ddclip/views", self._on_view)]
        if adapter.image_transport == "compressed":
            listening.append(subscribe(CompressedImage, "image/compressed", self._on_compressed, "frames"))
        else:
            listening.append(subscribe(Image, "image", self._on_frame, "frames"))
        listening.append(subscribe(TrackedDetections, "ddclip/detections", self._on_detections))
        if self.engine.clouds is not None:
            listening.append(subscribe(ObjectPoints, "ddclip/points", self._on_points, "clouds"))
            self.engine.health.count("clouds without colour", 0)  # listed from the start
        try:  # what ROS detectors publish, where vision_msgs is installed
            from vision_msgs.msg import Detection2DArray

            listening.append(subscribe(Detection2DArray, "detections", self._on_detection_array))
        except ImportError:
            self.get_logger().info("vision_msgs not installed: only ddclip/TrackedDetections are read for frames")
        served = [
            self.create_service(Query, "ddclip/query", self._serve(self._on_query), callback_group=services),
            self.create_service(Forget, "ddclip/forget", self._serve(self._on_forget), callback_group=services),
            self.create_service(Enroll, "ddclip/enroll", self._serve(self._on_enroll), callback_group=services),
        ]
        # A steady clock: under use_sim_time a bag that is not playing must not stop tracks from timing out.
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.tick_timer = self.create_timer(
            self.engine.tick_period, self._guard(self.engine.tick), inputs, clock=steady
        )
        self.create_timer(1.0, self._guard(self._publish_diagnostics), services, clock=steady)
        self.create_timer(0.5, self._guard(self._publish_markers), services, clock=steady)  # at most 2 Hz
        self.add_on_set_parameters_callback(self._check_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        if not adapter.main_thread_encoder:
            self.engine.start()
        qos_text = f"reliable, depth {depths['views']} for views and {depths['frames']} for frames"
        if not adapter.reliable:
            qos_text = f"best effort, depth {depths['views']} for views, sensor data for frames"
        self.get_logger().info(
            f"ready: input {', '.join(s.topic_name for s in listening)} ({qos_text}); "
            f"services {', '.join(s.service_name for s in served)}{_dds_profile_text(dds_profile)}"
        )

    # ------------------------------------------------------------------ guards
    def _guard(self, callback: Callable[..., None]) -> Callable[..., None]:
        """A subscription or timer callback that cannot end the node: bad input is counted, bugs logged."""

        def guarded(*args: Any) -> None:
            try:
                callback(*args)
            except ValueError as exc:
                self._bad_input(exc)
            except Exception as exc:
                self.engine.health.problem("callback errors", f"{type(exc).__name__}: {exc}")
                self._warn_once_a_second(f"{callback.__name__} failed: {traceback.format_exc()}", callback.__name__)

        return guarded

    def _serve(self, handler: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        """A service callback that answers ``success=false`` with the reason instead of raising."""

        def served(request: Any, response: Any) -> Any:
            try:
                return handler(request, response)
            except RequestError as exc:
                response.success, response.message = False, str(exc)
                self.engine.health.count("service requests refused")
                self._warn_once_a_second(f"{handler.__name__}: refused: {exc}", handler.__name__)
            except Exception as exc:
                response.success, response.message = False, f"internal error: {type(exc).__name__}: {exc}"
                self.engine.health.service_error(response.message)
                self.get_logger().error(f"{handler.__name__}: {traceback.format_exc()}")
            return response

        return served

    def _bad_input(self, exc: ValueError) -> None:
        """Count and log (once a second per kind of problem) an input message that was dropped."""
        cause = exc.__cause__ if isinstance(exc.__cause__, ValueError) else exc
        self.engine.health.bad_input(str(exc), too_large=isinstance(cause, ImageTooLarge))
        kind = " ".join(str(exc).split()[:2]) + " " + " ".join(str(cause).split()[:2])
        self._warn_once_a_second(f"dropped {exc}", key=kind)

    def _warn_once_a_second(self, message: str, key: str) -> None:
        """Log each kind of problem at most once a second, so a flood of bad input cannot flood the log."""
        now = time.monotonic()
        if now - self._last_warning.get(key, -1e9) >= 1.0:
            self._last_warning[key] = now
            self.get_logger().warning(message)

    # ------------------------------------------------------------------ input
    def _on_view(self, msg: ObjectView) -> None:
        try:
            rgb = image_to_rgb(msg.image, self.max_view_pixels)
            rgb = apply_mask(rgb, mask_to_bool(msg.mask, rgb.shape[:2]))
            self.engine.add_view(msg.track_id, rgb, header_in(msg.header), pose_in(msg.pose), msg.track_ended)
        except ValueError as exc:
            raise type(exc)(f"a view of track {msg.track_id!r}: {exc}") from exc

    def _on_points(self, msg: ObjectPoints) -> None:
        try:
            arrays = pointcloud_to_arrays(msg.cloud)
            self.engine.add_cloud(msg.track_id, arrays.points, arrays.colours, header_in(msg.header))
        except ValueError as exc:
            raise ValueError(f"a point cloud of track {msg.track_id!r}: {exc}") from exc
        if arrays.colour_missing:
            self.engine.health.count("clouds without colour")

    def _on_frame(self, msg: Image) -> None:
        self._frame(msg.header, lambda: image_to_rgb(msg, self.max_pixels))

    def _on_compressed(self, msg: CompressedImage) -> None:
        self._frame(msg.header, lambda: compressed_to_rgb(msg, self.max_pixels))

    def _frame(self, header: Any, convert: Callable[[], Any]) -> None:
        try:
            rgb = convert()
        except ValueError as exc:
            raise type(exc)(f"a frame: {exc}") from exc
        for problem in self.engine.add_frame(header_in(header), rgb):
            self._warn_once_a_second(f"dropped a detection: {problem}", key="box")

    def _on_detections(self, msg: TrackedDetections) -> None:
        self._detections(msg.header, boxes_from_tracked(msg), list(msg.ended_tracks))

    def _on_detection_array(self, msg: Any) -> None:
        self._detections(msg.header, boxes_from_vision_msgs(msg), [])

    def _detections(self, header: Any, boxes: list, ended: list[str]) -> None:
        for problem in self.engine.add_detections(header_in(header), boxes, ended):
            self._warn_once_a_second(f"dropped a detection: {problem}", key="box")

    def _annotate(self, header: Any, rgb: Any, boxes: list) -> None:
        labels = self.engine.captions_for([box.track_id for box in boxes])
        self._publish(self.annotated_pub, rgb_to_image(draw_detections(rgb, boxes, labels), header_out(header)))

    # ------------------------------------------------------------------ output (encoder thread)
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

    def _publish_results(self, results: list[ObjectResult]) -> None:
        for result in results:
            embedding, matches = result_messages(result)
            self._publish(self.embedding_pub, embedding)
            self._publish(self.matches_pub, matches)

    # ------------------------------------------------------------------ services
    def _on_query(self, request: Query.Request, response: Query.Response) -> Query.Response:
        self.engine.check_image_count(len(request.images))  # before converting any
        near = request.near
        answer = self.engine.query(
            QueryRequest(
                request.text,
                int(request.k),
                int(request.sources),
                images=tuple(self._views(request.images)),
                like_track_id=request.like_track_id,
                seen_after=_bound(request.seen_after),
                seen_before=_bound(request.seen_before),
                within_last_s=float(request.within_last_s),
                near_frame=near.header.frame_id,
                near=(near.point.x, near.point.y, near.point.z) if near.header.frame_id or request.radius else None,
                radius=float(request.radius),
                min_views=int(request.min_views),
                name_contains=request.name_contains,
            )
        )
        response.success, response.message = True, answer.message
        response.results = [hit_message(hit) for hit in answer.hits]
        response.left_out_other_frame, response.left_out_no_pose = answer.left_out_other_frame, answer.left_out_no_pose
        return response

    def _views(self, images: list[Any]) -> list[Any]:
        """Images of a request as views (RequestError naming the bad one)."""
        views = []
        for i, image in enumerate(images):
            try:
                views.append(image_to_rgb(image, self.max_view_pixels))
            except ValueError as exc:
                raise RequestError(f"image {i}: {exc}") from exc
        return views

    def _on_forget(self, request: Forget.Request, response: Forget.Response) -> Forget.Response:
        count = self.engine.forget(
            request.track_ids, all=request.all, enrolled_ids=request.enrolled_ids, older_than=_bound(request.older_than)
        )
        response.success, response.forgotten, response.message = True, count, f"forgot {count}"
        return response

    def _on_enroll(self, request: Enroll.Request, response: Enroll.Response) -> Enroll.Response:
        self.engine.check_image_count(len(request.images))  # before converting any
        images = self._views(request.images)
        answer = self.engine.enroll(request.name, request.category, request.track_id, images)
        response.success, response.id, response.message = True, answer.id, answer.message
        return response

    # ------------------------------------------------------------------ parameters
    def _check_parameters(self, parameters: list[Any]) -> SetParametersResult:
        """Refuse a change the engine would refuse (checked together, e.g. min_views <= max_views)."""
        changes = {p.name: p.value for p in parameters if p.name in SETTINGS}
        for parameter in parameters:  # the input queues' depths were set for the image sizes at start
            if parameter.name in ("max_pixels", "max_view_pixels"):
                sized_for = getattr(self.p.adapter, parameter.name)
                if parameter.value > sized_for:
                    reason = f"{parameter.name} above {sized_for}, its value at start (it sized the input queues)"
                    return SetParametersResult(successful=False, reason=f"{reason}, needs a restart")
        try:
            self.engine.checked_settings(**changes)
        except ValueError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    def _apply_parameters(self, parameters: list[Any]) -> None:
        changes = {p.name: p.value for p in parameters if p.name in SETTINGS}
        for parameter in parameters:
            if parameter.name in ("max_pixels", "max_view_pixels"):
                setattr(self, parameter.name, int(parameter.value))
        if changes:
            self.engine.update_settings(**changes)
            self.tick_timer.timer_period_ns = int(self.engine.tick_period * 1e9)
            self.get_logger().info("settings changed: " + ", ".join(f"{k}={v}" for k, v in changes.items()))

    # ------------------------------------------------------------------ diagnostics and shutdown
    def _publish_diagnostics(self) -> None:
        ok, message = self.engine.health.status()
        level = DiagnosticStatus.OK if ok else DiagnosticStatus.WARN
        # the node's full name: nodes of several robots (namespaces) on one domain stay apart
        status = DiagnosticStatus(level=level, name=f"{self.get_fully_qualified_name()}: encoder", message=message)
        status.hardware_id = str(self.engine.model.device)
        status.values = [KeyValue(key=key, value=str(value)) for key, value in self.engine.stats()]
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics_pub.publish(array)

    def _publish_markers(self) -> None:
        if self._markers_due.is_set():
            self._markers_due.clear()
            self._publish(self.markers_pub, memory_markers(self.engine.remembered()))

    def close(self) -> None:
        self.engine.close()


def _dds_profile_text(profile: str) -> str:
    if not rclpy.get_rmw_implementation_identifier().startswith("rmw_fastrtps"):
        return ""
    return f"; Fast DDS profile {profile}"


def _bound(stamp: Any) -> Stamp | None:
    """A time bound of a request: zero means none."""
    value = stamp_in(stamp)
    return None if value.is_zero else value


def main(args: list[str] | None = None) -> int:
    dds_profile = use_image_profile()
    rclpy.init(args=args)
    exit_with_parent()
    node, executor, service_executor, spinner, servers, failure = None, None, None, None, None, []
    try:
        try:
            node = DDClipNode(dds_profile)
        except Exception as exc:  # a fatal start-up error: one line, no traceback
            rclpy.logging.get_logger("ddclip").fatal(f"cannot start: {exc}")
            return 1
        executor = GroupExecutor(excluding=(node.service_group,))
        executor.add_node(node)
        service_executor = GroupExecutor(only=(node.service_group,))
        service_executor.serve(node)
        servers = threading.Thread(target=spin_on_thread, args=(service_executor, None, failure), daemon=True)
        servers.start()
        if node.p.adapter.main_thread_encoder:
            spinner = threading.Thread(target=spin_on_thread, args=(executor, node.engine.worker, failure), daemon=True)
            spinner.start()
            node.engine.run_worker()
        else:
            spin_until_shutdown(executor)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        try:
            ignore_late_signals()
        except KeyboardInterrupt:  # the signal's own, landing just now
            ignore_late_signals()
        if node is not None:
            node.close()
        for thread, spun in ((spinner, executor), (servers, service_executor)):
            if thread is not None:
                spun.shutdown(timeout_sec=5.0)
                thread.join(timeout=5.0)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    if failure:
        raise failure[0]
    return 0


if __name__ == "__main__":
    sys.exit(main())
