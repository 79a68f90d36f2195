"""Spinning a node until something happens, with a deadline (for tools and tests, not the node)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def spin_until(node: Any, condition: Callable[[], bool], timeout: float) -> bool:
    """Spin ``node`` until ``condition()`` holds (True) or ``timeout`` seconds pass (False)."""
    import rclpy

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
        if condition():
            return True
    return False
