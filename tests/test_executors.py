"""The node's two executors (real rclpy and DDS, in this process): inputs keep flowing while a service
is busy, and each executor runs only its own callbacks."""

from __future__ import annotations

import threading

import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy not installed: scripts/setup.sh installs ROS 2 from PyPI")
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from ddclip_ros.executors import GroupExecutor  # noqa: E402
from ddclip_ros.spin import spin_until  # noqa: E402
from tests.ros_node import ros_env  # noqa: E402


def test_views_keep_coming_while_a_service_works_and_each_executor_runs_its_own(tmp_path):
    ros_env(tmp_path)
    rclpy.init()
    server = rclpy.create_node("ddclip_test_server")
    client_node = rclpy.create_node("ddclip_test_executors_client")
    services = MutuallyExclusiveCallbackGroup()
    received: list[tuple[str, str]] = []
    release, serving = threading.Event(), threading.Event()
    threads: dict[str, str] = {}

    def slow_service(request, response):  # an enrolment encoding images, say
        threads["service"] = threading.current_thread().name
        serving.set()
        response.success = release.wait(30)
        return response

    def on_view(message: String) -> None:
        threads["input"] = threading.current_thread().name
        received.append((message.data, threading.current_thread().name))

    server.create_subscription(String, "views", on_view, 10)
    server.create_service(Trigger, "enroll", slow_service, callback_group=services)
    inputs = GroupExecutor(excluding=(services,))
    inputs.add_node(server)
    servers = GroupExecutor(only=(services,))
    servers.serve(server)
    assert server.executor is inputs  # serving took nothing from the node's own executor
    spinners = [threading.Thread(target=e.spin, name=n, daemon=True) for e, n in ((inputs, "in"), (servers, "srv"))]
    for spinner in spinners:
        spinner.start()
    try:
        publisher = client_node.create_publisher(String, "views", 10)
        enroll = client_node.create_client(Trigger, "enroll")
        assert enroll.wait_for_service(timeout_sec=20)
        assert spin_until(client_node, lambda: publisher.get_subscription_count() > 0, 20)
        future = enroll.call_async(Trigger.Request())
        assert spin_until(client_node, serving.is_set, 20)  # the service is busy now
        for i in range(5):
            publisher.publish(String(data=f"view {i}"))
        assert spin_until(client_node, lambda: len(received) == 5, 20), received  # ... and the views still come in
        assert not future.done()
        release.set()
        assert spin_until(client_node, future.done, 20) and future.result().success
        assert threads == {"service": "srv", "input": "in"}
    finally:
        release.set()
        for executor in (inputs, servers):
            executor.shutdown(timeout_sec=5)
        for spinner in spinners:
            spinner.join(timeout=5)
        server.destroy_node()
        client_node.destroy_node()
        rclpy.try_shutdown()


def test_an_executor_needs_its_groups_one_way(tmp_path):
    ros_env(tmp_path)
    rclpy.init()
    try:
        group = MutuallyExclusiveCallbackGroup()
        for kwargs in ({}, {"only": (group,), "excluding": (group,)}):
            with pytest.raises(ValueError, match="give the callback groups to run"):
                GroupExecutor(**kwargs)
    finally:
        rclpy.try_shutdown()
