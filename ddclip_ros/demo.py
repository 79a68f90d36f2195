"""ddclip-demo: the main job on the embedded default scene, end to end, then exit.

Starts the ddclip node as its own process, replays the example objects shipped in
ddclip_core/assets (12 rendered views of real meshes each) as tracked object views, prints what
the node recognised, asks it a language query, prints the ranked answer, and stops the node.
All ROS traffic stays on this machine (loopback discovery, its own domain id and log folder).
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path


def _assets() -> tuple[Path, list[tuple[str, str]]]:
    folder = Path(str(resources.files("ddclip_core") / "assets"))
    rows = [line.split("\t") for line in (folder / "examples.tsv").read_text().splitlines()[1:] if line.strip()]
    return folder, [(Path(name).stem, label) for name, label in rows]


def main(argv: list[str] | None = None) -> int:
    from ddclip_core.hub import default_bank, default_weights

    from .node_process import start_node, stop_node

    parser = argparse.ArgumentParser(
        prog="ddclip-demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--query", default="a red mug", help='language query to ask at the end (default: "a red mug")')
    parser.add_argument(
        "--weights", help="model weights (default: $DDCLIP_WEIGHTS or the downloaded published checkpoint, else random)"
    )
    parser.add_argument(
        "--bank",
        help="an embedding bank to match against as well (default: the Objaverse bank of "
        "`ddclip weights download --name all`, if it was made)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda (default: auto)")
    parser.add_argument("-k", type=int, default=4, help="answers to print (default: 4)")
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for the node's results (default: 300)"
    )
    args = parser.parse_args(argv)

    weights = args.weights or default_weights()
    bank = args.bank or (default_bank() if weights is not None else None)  # the bank needs its weights
    if weights is None:
        print("NOTE: no real weights found, so the node runs with RANDOMLY INITIALISED weights: everything below runs")
        print("      end to end, but names and scores are meaningless. `ddclip weights download` gets the real ones.\n")
    work = Path(tempfile.mkdtemp(prefix="ddclip-demo-"))
    os.environ.update(
        ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
        ROS_DOMAIN_ID=os.environ.get("ROS_DOMAIN_ID") or str(random.randint(1, 100)),
        ROS_LOG_DIR=str(work / "ros_log"),
    )
    assets, examples = _assets()
    labels = work / "labels.txt"
    labels.write_text("\n".join(label for _, label in examples) + "\n")
    params = {
        "weights": weights or "",
        "device": args.device,
        "labels": str(labels),
        "reliable": "true",
        "bank": str(bank or ""),
        "allow_random_weights": "true" if weights is None else "false",  # said plainly above
        "min_views": "12",
        "timeout_s": "5.0",
    }
    node_process = start_node(params, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        return _run(args, assets, examples, node_process, bank is not None)
    finally:
        stop_node(node_process, timeout=30)


def _run(
    args: argparse.Namespace,
    assets: Path,
    examples: list[tuple[str, str]],
    node_process: subprocess.Popen,
    with_bank: bool,
) -> int:
    import rclpy
    from ddclip.msg import ObjectMatches

    from .dds_profile import use_image_profile
    from .query_client import ask, format_answer
    from .replay import load_tracks, publish_tracks
    from .spin import spin_until

    tracks = load_tracks(assets, num_views=12)
    use_image_profile()
    rclpy.init()
    client = rclpy.create_node("ddclip_demo")
    try:
        latest: dict[str, ObjectMatches] = {}
        client.create_subscription(ObjectMatches, "ddclip/matches", lambda m: latest.__setitem__(m.track_id, m), 10)
        print(f"starting the ddclip node (ROS_DOMAIN_ID={os.environ['ROS_DOMAIN_ID']}) ...", flush=True)
        if not spin_until(
            client,
            lambda: client.count_publishers("ddclip/matches") > 0 or node_process.poll() is not None,
            args.timeout,
        ):
            raise TimeoutError("the node did not start")
        if node_process.poll() is not None:
            print(node_process.stdout.read(), file=sys.stderr)
            print("ddclip-demo: the node exited before it was ready (its output is above)", file=sys.stderr)
            return 1
        sent = publish_tracks(client, tracks, rate_hz=60.0)
        print(f"replayed {sent} views of {len(tracks)} objects: {', '.join(name for name, _ in tracks)}")
        # min_views is every view, so each track is encoded once, at its end, with the views the node kept
        # (near-duplicate views, e.g. of a symmetric object, are not kept): its first result is its last.
        complete = lambda: all(name in latest for name, _ in tracks)  # noqa: E731
        if not spin_until(client, complete, args.timeout):
            print(f"ddclip-demo: results for only {sorted(latest)} within {args.timeout:.0f} s", file=sys.stderr)
            return 1
        print("\nwhat the node recognised (best label, views kept of those sent):")
        for name, views in tracks:
            best = latest[name].label_matches[0]
            print(f"  {name:<12} {best.name:<16} {best.score:6.3f}  {latest[name].num_views}/{len(views)} views")
            for match in latest[name].bank_matches[:3] if with_bank else []:
                print(f"      nearest in the bank: {match.score:6.3f}  {match.name[:70]}  ({match.id})")
        response = ask(client, args.query, k=args.k, sources="both" if with_bank else "seen")
        print("\n" + format_answer(args.query, response))
        return 0 if response.success else 1
    finally:
        client.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
