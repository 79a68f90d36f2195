"""Running the ddclip node as a child process (the demo, the benchmark and the tests do)."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from typing import Any

PARENT_ENV = "DDCLIP_PARENT_PID"
PR_SET_PDEATHSIG = 1


def start_node(params: dict[str, str], ros_args: list[str] | tuple = (), **popen: Any) -> subprocess.Popen:
    """Start ``python -m ddclip_ros.node`` with ``ros_args`` (remappings ``-r a:=b``, ``--params-file F``,
    ...) and ``params`` as parameter overrides, which win over a parameter file's values.

    Empty values are left out: rcl cannot parse ``-p name:=`` and the node's default is "" anyway.
    """
    overrides = [item for name, value in params.items() if value for item in ("-p", f"{name}:={value}")]
    # The node stops when this process dies without stopping it (killed by a timeout, say): see exit_with_parent.
    popen["env"] = {**(popen.get("env") or os.environ), PARENT_ENV: str(os.getpid())}
    command = [sys.executable, "-m", "ddclip_ros.node", "--ros-args", *ros_args, *overrides]
    return subprocess.Popen(command, **popen)


def exit_with_parent() -> None:
    """In a node started by ``start_node``: ask Linux for SIGTERM (a clean shutdown) when the starting thread
    goes, so a killed demo or test leaves no node running. Elsewhere (launch, a shell) it does nothing."""
    parent = os.environ.get(PARENT_ENV)
    if not parent or not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(parent):  # it died before the request was in place
        os.kill(os.getpid(), signal.SIGTERM)


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
