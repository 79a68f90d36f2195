"""Executor benchmark: how many views a second an rclpy executor takes, and what it leaves to the encoder.

A publisher process sends 224 x 224 RGB images (reliable, as a replay does) at ``--hz`` (default 480: 16
tracks x 30 Hz); this process takes them with one executor at a time while a compute thread runs
matmuls (a stand-in for the encoder, which also needs the GIL between its ops); both processes use
ddclip's Fast DDS profile, as the node and its tools do. Printed per executor:
messages sent and received per second and the compute thread's speed as a share of its speed with no messages
(measured first, in the same run), and the CPU time the executor's own thread spends per message
received (waiting, taking, converting: DDS's threads not included). The node runs ``GroupExecutor``
(SingleThreadedExecutor); the MultiThreadedExecutor is what it ran before.

    .venv/bin/python benchmarks/executor.py --hz 480 --seconds 10
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(40 + os.getpid() % 50))
os.environ.setdefault("ROS_LOG_DIR", tempfile.mkdtemp(prefix="ddclip-bench-log-"))

import numpy as np
import rclpy
import torch
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from ddclip_ros.dds_profile import use_image_profile
from ddclip_ros.executors import GroupExecutor

QOS = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
TOPIC = "ddclip_bench/views"


def publish(hz: float, seconds: float) -> None:
    """The publisher process: ``seconds`` of images at ``hz`` after a second to be discovered."""
    rclpy.init()
    node = rclpy.create_node("ddclip_bench_publisher")
    publisher = node.create_publisher(Image, TOPIC, QOS)
    message = Image(height=224, width=224, encoding="rgb8", step=224 * 3)
    message.data = np.random.default_rng(0).integers(0, 256, 224 * 224 * 3, dtype=np.uint8).tobytes()
    deadline = time.monotonic() + 10
    while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    start, sent = time.monotonic(), 0
    while time.monotonic() - start < seconds:
        publisher.publish(message)
        sent += 1
        time.sleep(max(0.0, start + sent / hz - time.monotonic()))
    print(f"{sent / (time.monotonic() - start):.1f}", flush=True)  # what it managed to send, per second
    rclpy.try_shutdown()


class Compute:
    """A thread doing matmuls, counting rounds: the encoder's stand-in."""

    def __init__(self) -> None:
        self.rounds, self._stop = 0, False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        x, layer = torch.randn(600, 768), torch.nn.Linear(768, 768)
        with torch.inference_mode():
            while not self._stop:
                h = x
                for _ in range(20):  # many small ops, as the encoder's blocks: the GIL is taken between them
                    h = layer(h)
                self.rounds += 1

    def rate(self, seconds: float) -> float:
        start, rounds = time.monotonic(), self.rounds
        time.sleep(seconds)
        return (self.rounds - rounds) / (time.monotonic() - start)

    def stop(self) -> None:
        self._stop = True
        self._thread.join()


def run(kind: str, args: argparse.Namespace, compute: Compute) -> tuple[float, float, float, float]:
    node = rclpy.create_node(f"ddclip_bench_{kind.replace('-', '_')}")
    received = [0]

    def on_image(message: Image) -> None:
        np.frombuffer(message.data, np.uint8).reshape(message.height, message.width, 3)
        received[0] += 1

    group = MutuallyExclusiveCallbackGroup()
    node.create_subscription(Image, TOPIC, on_image, QOS, callback_group=group)
    node.create_timer(0.1, lambda: None, callback_group=group)  # the node's tick timer
    if kind == "multi-threaded":
        executor = MultiThreadedExecutor(num_threads=4)
    elif kind == "single-threaded":
        executor = SingleThreadedExecutor()
    else:
        other = MutuallyExclusiveCallbackGroup()
        node.create_timer(1.0, lambda: None, callback_group=other)  # diagnostics, on the services' executor
        executor = GroupExecutor(excluding=(other,))
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    command = [sys.executable, __file__, "--publish", str(args.hz), str(args.seconds + 3)]
    publisher = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    time.sleep(2.5)  # discovery and the publisher's first second
    clock = time.pthread_getcpuclockid(spinner.ident)  # the executor thread's own CPU time
    start, cpu = received[0], time.clock_gettime(clock)
    rate = compute.rate(args.seconds)
    cpu, taken = time.clock_gettime(clock) - cpu, received[0] - start
    got = taken / args.seconds
    sent = float(publisher.communicate()[0].split()[-1])
    executor.shutdown(timeout_sec=5)
    node.destroy_node()
    return sent, got, rate, cpu / max(taken, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hz", type=float, default=480.0, help="images per second (default: 480 = 16 x 30 Hz)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per executor (default: 10)")
    parser.add_argument("--publish", nargs=2, type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.publish:  # the profile comes with the environment
        publish(*args.publish)
        return 0
    print(f"Fast DDS: {use_image_profile()} (the node's, unless Fast DDS is configured already)")
    rclpy.init()
    compute = Compute()
    idle = compute.rate(args.seconds)
    print(f"{args.hz:g} images/s offered (224 x 224 RGB, reliable); compute thread alone: {idle:.2f} rounds/s")
    print(f"{'executor':>28} {'sent/s':>8} {'received/s':>11} {'compute':>9} {'ms CPU/msg':>10}")
    for kind in ("multi-threaded", "single-threaded", "GroupExecutor (the node's)"):
        sent, got, rate, cpu = run(kind.split()[0], args, compute)
        per = f"{cpu * 1e3:10.3f}" if kind != "multi-threaded" else f"{'-':>10}"  # its callbacks run on a pool
        print(f"{kind:>28} {sent:8.1f} {got:11.1f} {rate / idle * 100:8.0f}% {per}")
    compute.stop()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
