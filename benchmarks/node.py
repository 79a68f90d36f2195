"""Node benchmark: end-to-end latency, batched throughput and memory under a flood, over real DDS.

- latency: from publishing the last view of a track to receiving its matches in this process,
  p50/p99, against the encoder alone on the same views in the same run (overhead goal: <= 10% + 5 ms);
- throughput: 1, 4, 16 concurrent tracks, the batched worker (max_batch 16) against one track per
  forward pass (max_batch 1), in tracks/s;
- memory: the node's resident memory while views of 50 tracks flood in at 30 Hz (bounded: no growth
  after warm-up).

    .venv/bin/python benchmarks/node.py --device cpu --flood-seconds 600      # the full 10-minute flood
    .venv/bin/python benchmarks/node.py --sections latency                    # one part only
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from _timing import rss_mb

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(40 + os.getpid() % 50))
os.environ.setdefault("ROS_LOG_DIR", tempfile.mkdtemp(prefix="ddclip-bench-log-"))

import rclpy
from ddclip.msg import ObjectMatches, ObjectView
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import ExternalShutdownException
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import String

from ddclip_core import load_model
from ddclip_ros.dds_profile import PROFILE, TRANSPORTS_VARIABLE, VARIABLES
from ddclip_ros.image_conversion import rgb_to_image
from ddclip_ros.node_process import start_node, stop_node
from ddclip_ros.spin import spin_until

RELIABLE = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
ECHO = "ddclip_bench/echo"
ECHO_VIEWS = "ddclip_bench/views"  # the echo's own input: it never runs while the node encodes


def run_echo() -> None:
    """The echo process: answers each track's last view on ``ECHO`` with the track id."""
    node = rclpy.create_node("ddclip_bench_echo")
    reply = node.create_publisher(String, ECHO, 100)

    def on_view(msg: ObjectView) -> None:
        if msg.track_ended:
            reply.publish(String(data=msg.track_id))

    node.create_subscription(ObjectView, ECHO_VIEWS, on_view, RELIABLE)
    with contextlib.suppress(KeyboardInterrupt, ExternalShutdownException):  # it is ended by SIGTERM
        rclpy.spin(node)


MAX_VIEWS = 12  # the node's default max_views


class Harness:
    def __init__(self, args: argparse.Namespace, **params: str) -> None:
        overrides = {"weights": args.weights or "", "device": args.device, "reliable": "true", "timeout_s": "30.0"}
        overrides["precision"] = args.precision  # resolved in this process: the node runs what it is compared with
        overrides["allow_random_weights"] = "false" if args.weights else "true"  # timings only: no names read
        if args.encoder_thread:
            overrides["main_thread_encoder"] = "false"
        self.process = start_node({**overrides, **params}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.node = rclpy.create_node("ddclip_bench")
        self.arrivals: dict[tuple[str, int], float] = {}
        self.received = 0
        self.latencies: list[tuple[float, float]] = []  # (arrival, ms) of stamped results
        self.node.create_subscription(ObjectMatches, "ddclip/matches", self._on_matches, 100)
        self.diagnostics: dict[str, str] = {}
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.publisher = self.node.create_publisher(ObjectView, "ddclip/views", RELIABLE)
        started = lambda: (  # noqa: E731
            self.process.poll() is not None
            or (self.publisher.get_subscription_count() > 0 and self.node.count_publishers("ddclip/matches") > 0)
        )
        if not spin_until(self.node, started, 300) or self.process.poll() is not None:
            raise RuntimeError("the node did not start")

    def _on_matches(self, msg: ObjectMatches) -> None:
        self.received += 1
        if msg.header.stamp.sec:  # stamped with the wall time its newest view was sent (the stream)
            sent = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
            self.latencies.append((time.monotonic(), (time.time() - sent) * 1e3))
        self.arrivals.setdefault((msg.track_id, msg.num_views), time.perf_counter())

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            self.diagnostics.update({value.key: value.value for value in status.values})

    def publish(
        self, track: str, view: np.ndarray, ended: bool = False, stamp: bool = False, publisher: Any = None
    ) -> None:
        message = ObjectView(track_id=track, track_ended=ended)
        message.image = rgb_to_image(view)
        if stamp:
            now = time.time()
            message.header.stamp.sec, message.header.stamp.nanosec = int(now), int(now % 1 * 1e9)
        (publisher or self.publisher).publish(message)

    def wait_for(self, keys: list[tuple[str, int]], timeout: float = 600) -> None:
        if not spin_until(self.node, lambda: all(k in self.arrivals for k in keys), timeout):
            raise TimeoutError(f"no matches for {[k for k in keys if k not in self.arrivals][:3]}")

    def close(self) -> None:
        self.node.destroy_node()
        stop_node(self.process)


def timed(function: object, *args: object) -> float:
    start = time.perf_counter()
    function(*args)
    return (time.perf_counter() - start) * 1e3


def views(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 224, 224, 3), dtype=np.uint8)


def fastdds_profile(choice: str) -> str:
    if choice == "ddclip":
        return str(PROFILE)
    if choice == "defaults":  # a profile that changes nothing: Fast DDS's own transports
        empty = Path(tempfile.mkdtemp(prefix="ddclip-bench-")) / "fastdds_defaults.xml"
        empty.write_text(
            '<?xml version="1.0"?>\n<dds xmlns="http://www.eprosima.com"><profiles>'
            '<participant profile_name="unused"/></profiles></dds>\n'
        )
        return str(empty)
    return str(Path(choice).resolve())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", help="weights (default: random ViT-B-32; speed does not depend on values)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", help="auto (as the node's default), fp32, fp16, bf16")
    parser.add_argument("--views", type=int, default=6, help="views per track (default: 6)")
    parser.add_argument("--repeats", type=int, default=10, help="tracks timed for latency (default: 10)")
    parser.add_argument(
        "--view-interval", type=float, default=0.0, help="latency: ms between a track's views (default: 0, a burst)"
    )
    parser.add_argument("--flood-seconds", type=float, default=600.0, help="flood duration (default: 600 = 10 min)")
    parser.add_argument("--flood-tracks", type=int, default=50, help="tracks the flood cycles over (default: 50)")
    parser.add_argument("--flood-hz", type=float, default=30.0, help="flood views per second (default: 30)")
    parser.add_argument(
        "--encoder-thread", action="store_true", help="main_thread_encoder:=false (the encoder on a thread of its own)"
    )
    parser.add_argument(
        "--sections",
        default="latency,throughput,flood",
        help="comma-separated parts to run: latency, throughput, flood, stream (default: the first three)",
    )
    parser.add_argument("--stream-seconds", type=float, default=60.0, help="stream duration per setting (default: 60)")
    parser.add_argument("--stream-warmup", type=float, default=10.0, help="seconds before measuring (default: 10)")
    parser.add_argument(
        "--stream-warmup-max", type=float, default=300.0, help="longest wait for every track to be full (default: 300)"
    )
    parser.add_argument("--stream-tracks", type=int, default=16, help="tracks in the stream (default: 16)")
    parser.add_argument("--stream-hz", type=float, default=30.0, help="views per second of each track (default: 30)")
    parser.add_argument(
        "--fastdds-profile",
        default="ddclip",
        help="ddclip (ddclip_ros/fastdds_images.xml, the node's default), defaults (Fast DDS's own) or a file",
    )
    parser.add_argument("--echo", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sections = set(args.sections.split(","))
    if not args.echo:  # every process of the run reads it: the node and the echo inherit this environment
        os.environ.pop(TRANSPORTS_VARIABLE, None)
        os.environ.pop(VARIABLES[1], None)
        os.environ[VARIABLES[0]] = fastdds_profile(args.fastdds_profile)
    rclpy.init()
    if args.echo:
        run_echo()
        return 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model(args.weights, device=args.device, precision=args.precision)
    args.precision = model.precision
    print(f"model {model.config.arch} on {model.device}, {model.precision_reason}; {args.views} views per track")
    print(f"Fast DDS profile: {args.fastdds_profile} ({os.environ[VARIABLES[0]]})")

    if "latency" in sections:
        latency(args, model)
    if "throughput" in sections:
        throughput(args)
    if "flood" in sections:
        flood(args)
    if "stream" in sections:
        stream(args)
    rclpy.try_shutdown()
    return 0


def latency(args: argparse.Namespace, model: object) -> None:
    """Last view published -> matches received, against the encoder alone."""
    harness = Harness(args, min_views=str(args.views), max_batch="16")
    # DDS alone, in the same run: a plain subscriber in another process answers each track's last view
    # with a short message (the burst's delivery there, plus one small message back). It listens on a
    # topic of its own and is timed on its own tracks, so that it and the node never share the 2 cores.
    delivered: dict[str, float] = {}
    harness.node.create_subscription(String, ECHO, lambda m: delivered.setdefault(m.data, time.perf_counter()), 100)
    echo = subprocess.Popen([sys.executable, __file__, "--echo"])
    try:
        measure_latency(args, model, harness, delivered)
    finally:
        echo.terminate()
        echo.wait()
        harness.close()


def measure_latency(args: argparse.Namespace, model: object, harness: Harness, delivered: dict[str, float]) -> None:
    """The timed tracks of ``latency``; ``delivered``: when the echo process answered each track's last view."""
    to_echo = harness.node.create_publisher(ObjectView, ECHO_VIEWS, RELIABLE)
    ready = lambda: to_echo.get_subscription_count() > 0 and harness.node.count_publishers(ECHO) > 0  # noqa: E731
    if not spin_until(harness.node, ready, 60):
        raise RuntimeError("the echo process did not start")
    for j, view in enumerate(views(args.views, seed=10_000)):  # one untimed track: first-use costs
        harness.publish("warm-up", view, ended=j == args.views - 1)
        pause(args, harness, j)
    harness.wait_for([("warm-up", args.views)])
    model.encode_views(views(args.views, seed=0))
    latencies, encoder, threaded, transport = [], [], [], []
    for i in range(args.repeats):
        track_views = views(args.views, seed=i)
        for j, view in enumerate(track_views):
            harness.publish(f"lat-{i}", view, ended=j == args.views - 1)
            pause(args, harness, j)
        sent = time.perf_counter()
        harness.wait_for([(f"lat-{i}", args.views)])
        latencies.append((harness.arrivals[(f"lat-{i}", args.views)] - sent) * 1e3)
        for j, view in enumerate(track_views):
            harness.publish(f"lat-{i}", view, ended=j == args.views - 1, publisher=to_echo)
            pause(args, harness, j)
        sent = time.perf_counter()
        if not spin_until(harness.node, lambda i=i: f"lat-{i}" in delivered, 10):
            raise TimeoutError(f"the echo process did not answer track lat-{i}")
        transport.append((delivered[f"lat-{i}"] - sent) * 1e3)
        start = time.perf_counter()
        model.encode_views(track_views)
        encoder.append((time.perf_counter() - start) * 1e3)
        # With main_thread_encoder:=false the encoder has a thread of its own, where OpenMP is slower.
        thread = threading.Thread(target=lambda v=track_views: threaded.append(timed(model.encode_views, v)))
        thread.start()
        thread.join()
    e2e, enc = np.percentile(latencies, [50, 99]), np.percentile(encoder, [50, 99])
    on_thread = np.percentile(threaded, [50, 99])
    pace = f" (views {args.view_interval:g} ms apart)" if args.view_interval > 0 else " (views in a burst)"
    print(f"latency last view -> matches: p50 {e2e[0]:.1f} ms, p99 {e2e[1]:.1f} ms{pace}")
    print(f"encoder alone:                p50 {enc[0]:.1f} ms, p99 {enc[1]:.1f} ms")
    print(f"encoder alone, other thread:  p50 {on_thread[0]:.1f} ms, p99 {on_thread[1]:.1f} ms")
    # Against the encoder run where the node runs it (by default the main thread, where it is fastest).
    same, where = (on_thread[0], "other thread") if args.encoder_thread else (enc[0], "main thread")
    overhead = e2e[0] - same
    print(
        f"overhead p50 over the encoder on the {where}, as the node runs it: {overhead:.1f} ms "
        f"({overhead / same * 100:.0f}%; goal <= 10% + 5 ms)"
    )
    dds = float(np.percentile(transport, 50))
    print(f"DDS alone: the {args.views} views to a plain subscriber in another process and a reply: p50 {dds:.1f} ms")


def pause(args: argparse.Namespace, harness: Harness, j: int) -> None:
    """Between a track's views (--view-interval): a camera's pace, which leaves the encoder idle time."""
    if args.view_interval > 0 and j < args.views - 1:
        spin_until(harness.node, lambda: False, args.view_interval / 1e3)


def throughput(args: argparse.Namespace) -> None:
    """The batched worker against one track per forward pass."""
    print(f"\n{'tracks':>6} {'batched tracks/s':>17} {'one-at-a-time tracks/s':>23} {'speed-up':>9}")
    for tracks in (1, 4, 16):
        rates = []
        for max_batch in ("16", "1"):
            harness = Harness(args, min_views=str(args.views), max_batch=max_batch)
            keys = [(f"t{max_batch}-{n}", args.views) for n in range(tracks)]  # reliable input: no view is lost
            start = time.perf_counter()
            for j in range(args.views):
                for n in range(tracks):
                    harness.publish(f"t{max_batch}-{n}", views(1, seed=1000 * n + j)[0], ended=j == args.views - 1)
            harness.wait_for(keys)
            rates.append(tracks / (max(harness.arrivals[k] for k in keys) - start))
            harness.close()
        print(f"{tracks:>6} {rates[0]:>17.2f} {rates[1]:>23.2f} {rates[0] / rates[1]:>8.2f}x")


def flood(args: argparse.Namespace) -> None:
    """The node's resident memory while views flood in (30 Hz over 50 tracks by default)."""
    harness = Harness(args, max_batch="16")
    rng = np.random.default_rng(5)  # every view new: the buffers keep replacing views, the worst case for memory
    start = time.monotonic()
    samples = []
    sent = 0
    while time.monotonic() - start < args.flood_seconds:
        harness.publish(f"flood-{sent % args.flood_tracks}", rng.integers(0, 256, (224, 224, 3), dtype=np.uint8))
        sent += 1
        rclpy.spin_once(harness.node, timeout_sec=0)
        if not samples or time.monotonic() - samples[-1][0] - start >= 10:
            samples.append((time.monotonic() - start, rss_mb(harness.process.pid)))
        time.sleep(max(0.0, start + sent / args.flood_hz - time.monotonic()))
    warm = [rss for t, rss in samples if t >= min(60.0, args.flood_seconds / 4)]
    print(f"\nflood: {sent} views over {args.flood_tracks} tracks in {args.flood_seconds:.0f} s")
    print(f"{harness.received} results received ({harness.received / args.flood_seconds:.1f}/s)")
    print("node RSS MB over time: " + ", ".join(f"{t:.0f}s {rss:.0f}" for t, rss in samples))
    if warm:
        print(f"after warm-up: min {min(warm):.0f} MB, max {max(warm):.0f} MB, growth {warm[-1] - warm[0]:+.0f} MB")
    harness.close()


def stream(args: argparse.Namespace) -> None:
    """16 tracks each sending a new view at 30 Hz (``--stream-hz``), re-encoded every 2 new views: results per
    second and view-to-result latency with the view cache on and off, in the same run."""
    hz, warmup = args.stream_hz, args.stream_warmup
    print(
        f"\nstream: {args.stream_tracks} tracks x {hz:g} Hz, re-encode every 2 new views, {args.stream_seconds:.0f} s "
        f"measured after at least {warmup:.0f} s, once every track is full and encoded at {MAX_VIEWS} views (at most "
        f"{args.stream_warmup_max:.0f} s)"
    )
    rows = {}
    for label, cache_mb in (("view cache on", "512"), ("view cache off", "0")):
        harness = Harness(args, max_batch="8", min_views="2", reencode_after="2", view_cache_mb=cache_mb)
        rng = np.random.default_rng(9)
        # Every view new, as a camera moving round the object: from a pool made once, each sent rolled by an
        # offset of its own (recycled views would settle into a buffer that no longer changes).
        per_track = 48
        pool = rng.integers(0, 256, (args.stream_tracks * per_track, 224, 224, 3), dtype=np.uint8)
        start, sent = time.monotonic(), 0
        measured, received_before = start + warmup, None
        # Steady state: every track full and encoded once at max_views (a first encode runs all its views
        # through every block; on a slow CPU that phase outlasts a fixed warm-up).
        full = [(f"s{track}", MAX_VIEWS) for track in range(args.stream_tracks)]
        while received_before is None or time.monotonic() < measured + args.stream_seconds:
            now = time.monotonic()
            settled = all(key in harness.arrivals for key in full) or now >= start + args.stream_warmup_max
            if received_before is None and now >= start + warmup and settled:
                measured = now
                received_before, sent_before, counted = harness.received, sent, dict(harness.diagnostics)
            track, turn = sent % args.stream_tracks, sent // args.stream_tracks
            view = np.roll(pool[track * per_track + turn % per_track], 7 + 13 * (turn // per_track), axis=1)
            harness.publish(f"s{track}", view, stamp=True)
            sent += 1
            rclpy.spin_once(harness.node, timeout_sec=0)
            time.sleep(max(0.0, start + sent / (hz * args.stream_tracks) - time.monotonic()))
        elapsed = time.monotonic() - measured
        received, sent = harness.received - received_before, sent - sent_before
        latencies = [ms for arrival, ms in harness.latencies if arrival >= measured]
        p50, p99 = np.percentile(latencies, [50, 99]) if latencies else (float("nan"),) * 2
        rows[label] = received / elapsed
        # from /diagnostics (1 Hz): views run through the per-view blocks per encoded track, measured part
        key, d = "views through the per-view blocks", harness.diagnostics
        tracks = int(d.get("tracks encoded", 0)) - int(counted.get("tracks encoded", 0))
        per_view = f", {(int(d[key]) - int(counted.get(key, 0))) / tracks:.1f} per-view encodes per result" if (
            key in d and tracks) else ""  # fmt: skip
        print(f"  {label:<15} {sent / elapsed:6.0f} views/s sent, {received / elapsed:5.2f} results/s, "
              f"view-to-result p50 {p50:7.0f} ms, p99 {p99:7.0f} ms{per_view}; "
              f"after a {measured - start:.0f} s warm-up")  # fmt: skip
        harness.close()
    print(f"  results/s with the cache: {rows['view cache on'] / rows['view cache off']:.2f} x without (goal >= 1.6 x)")


if __name__ == "__main__":
    sys.exit(main())
