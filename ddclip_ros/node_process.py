"""Running the ddclip node as a child process (the demo, the benchmark and the tests do)."""

from __future__ import annotations

import signal
import subprocess
import sys
from typing import Any


def start_node(params: dict[str, str], **popen: Any) -> subprocess.Popen:
    """Start ``python -m ddclip_ros.node`` with ``params`` as parameter overrides.

    Empty values are left out: rcl cannot parse ``-p name:=`` and the node's default is "" anyway.
    """
    overrides = [item for name, value in params.items() if value for item in ("-p", f"{name}:={value}")]
    return subprocess.Popen([sys.executable, "-m", "ddclip_ros.node", "--ros-args", *overrides], **popen)


def stop_node(process: subprocess.Popen, timeout: float = 60.0) -> str:
    """SIGINT (a clean shutdown: the node saves its memory), wait, kill if it hangs; returns its output."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return output or ""
