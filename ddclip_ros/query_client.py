"""ddclip-query: ask a running ddclip node which objects match a text, and print the ranked answer."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from .dds_profile import use_image_profile
from .spin import spin_until

SOURCES = {"seen": 1, "bank": 2, "both": 3}


def ask(node: Any, text: str, k: int = 5, sources: str = "seen", timeout: float = 30.0) -> Any:
    """Call ddclip/query from ``node``; returns the response (raises TimeoutError if no answer)."""
    from ddclip.srv import Query

    client = node.create_client(Query, "ddclip/query")
    if not client.wait_for_service(timeout_sec=timeout):
        raise TimeoutError(f"no ddclip node answers on {client.srv_name} (is it running, same ROS_DOMAIN_ID?)")
    future = client.call_async(Query.Request(text=text, k=k, sources=SOURCES[sources]))
    if not spin_until(node, future.done, timeout):
        raise TimeoutError(f"{client.srv_name} did not answer within {timeout:.0f} s")
    return future.result()


def format_answer(text: str, response: Any) -> str:
    if not response.success:
        return f"query {text!r} failed: {response.message}"
    lines = [
        f"objects matching {text!r}:",
        f"  {'#':>2} {'score':>7}  {'source':<6} {'object':<24} {'views':>5}  last seen",
    ]
    for rank, result in enumerate(response.results, 1):
        name = result.track_id or result.id
        if result.name:
            name = f"{name} ({result.name})"
        seen = time.strftime("%H:%M:%S", time.localtime(result.last_seen.sec)) if result.source == "seen" else "-"
        lines.append(
            f"  {rank:>2} {result.score:7.3f}  {result.source:<6} {name[:24]:<24} {result.num_views:>5}  {seen}"
        )
    if not response.results:
        lines.append("  (nothing seen yet)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ddclip-query", description=__doc__)
    parser.add_argument("text", help='what to look for, e.g. "a red mug"')
    parser.add_argument("-k", type=int, default=5, help="results (default: 5)")
    parser.add_argument("--sources", default="seen", choices=list(SOURCES), help="seen objects, the bank, or both")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the node (default: 30)")
    args, ros_args = parser.parse_known_args(argv)
    import rclpy

    use_image_profile()
    rclpy.init(args=ros_args)
    node = rclpy.create_node("ddclip_query")
    try:
        response = ask(node, args.text, args.k, args.sources, args.timeout)
        print(format_answer(args.text, response))
        return 0 if response.success else 1
    except TimeoutError as exc:
        print(f"ddclip-query: {exc}", file=sys.stderr)
        return 2
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
