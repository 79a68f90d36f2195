"""The node's two single-threaded executors (inputs on one thread, services on another) and how they
are spun and shut down.

rclpy's MultiThreadedExecutor busy-waits while a mutually exclusive callback group is running and
its subscription has more messages: each wake-up makes a handler that finds the group busy, gives
up and wakes the executor again. Under a stream of views (16 tracks x 30 Hz) that loop held the GIL
so much that it took 35-122 of 480 messages a second and a compute thread beside it ran at 1-29 % of
its speed; single-threaded executors took 359-480 and left it 75-86 % (benchmarks/executor.py).

So the node runs two SingleThreadedExecutors on the same node, each waiting only on its own callbacks
(``can_execute``, which rclpy's executors use to build their wait sets): the node's own executor for
inputs, timers and parameters, and one that ``serve``s its services, so that an enrolment that encodes
images for a second does not hold up the views, and views never wait behind a query.
"""

from __future__ import annotations

import signal
import time
from typing import Any

from rclpy.callback_groups import CallbackGroup
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor


class GroupExecutor(SingleThreadedExecutor):
    """A SingleThreadedExecutor for the callbacks of some callback groups of its nodes (``only``), or of
    all groups but some (``excluding``)."""

    def __init__(
        self,
        *,
        only: tuple[CallbackGroup, ...] = (),
        excluding: tuple[CallbackGroup, ...] = (),
        context: Any = None,
    ) -> None:
        super().__init__(context=context)  # first: a half-made executor fails in its __del__
        if bool(only) == bool(excluding):
            raise ValueError("give the callback groups to run (only) or those not to run (excluding)")
        self._only, self._excluding = only, excluding
        self._served: list[Any] = []

    def serve(self, node: Any) -> None:
        """Wait on this node's callbacks of our groups without making this the node's executor: rclpy
        gives a node one executor, and ``add_node`` on a second one takes it from the first."""
        self._served.append(node)
        self.wake()

    def get_nodes(self) -> list[Any]:
        return [*super().get_nodes(), *self._served]

    def shutdown(self, timeout_sec: float | None = None) -> bool:
        done = super().shutdown(timeout_sec)
        self._served = []
        return done

    def can_execute(self, entity: Any) -> bool:
        group = entity.callback_group
        mine = any(group is g for g in self._only) if self._only else not any(group is g for g in self._excluding)
        return mine and super().can_execute(entity)


def ignore_late_signals() -> None:
    """Shutdown has begun. rclpy shuts the context down in the signal handler, in whichever thread the
    signal lands, but CPython raises the signal's KeyboardInterrupt later, in the main thread: after the
    executors have already ended, it landed in the middle of closing the memory. From here on a signal
    (the first one's late KeyboardInterrupt, or another) is ignored; SIGKILL still ends the process.

    A handler that does nothing, not SIG_IGN: a signal already received but not yet handled by Python
    finds SIG_IGN in place and CPython prints "Signal 2 ignored due to race condition" with a traceback."""
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, _ignore_signal)


def _ignore_signal(number: int, frame: Any) -> None:
    pass


def spin_on_thread(executor: GroupExecutor, worker: Any, failure: list[BaseException]) -> None:
    """An executor on a thread beside the encoder's; when it ends (a signal shut the context down), the
    encoder ``worker`` (if given) stops. A crash of any executor ends the whole node, as it did with one
    executor: not a node that runs on without its services or its inputs."""
    from ddclip_core.perception.worker import single_threaded_torch  # torch: loaded by the engine by now

    single_threaded_torch()  # services' and callbacks' torch work must not slow the encoder down
    try:
        spin_until_shutdown(executor)
    except BaseException as exc:  # re-raised in main: the node must not exit 0 after a crash
        failure.append(exc)
        executor.context.try_shutdown()  # wakes the other executor, which then ends as on a signal
    finally:
        if worker is not None:
            worker.stop()


def spin_until_shutdown(executor: GroupExecutor) -> None:
    """Spin until a signal shuts the context down. A signal can land while the executor builds its wait
    set or takes a message, which then fails on the invalid context or entity (RCLError, or a
    RuntimeError from take_message) rather than raising ExternalShutdownException: that is the same
    clean shutdown, not a crash."""
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        if not _shut_down_soon(executor.context):
            raise


def _shut_down_soon(context: Any, grace_s: float = 2.0) -> bool:
    """Whether the context is shut down or is within ``grace_s``. rclpy shuts it down from a signal on a
    thread of its own, so the executor can fail on what that tears down just before ``ok()`` turns
    False (seen: SIGINT during a flood of views). A real crash is raised ``grace_s`` later."""
    deadline = time.monotonic() + grace_s
    while context.ok():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True
