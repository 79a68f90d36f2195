"""Point clouds per track through the node: a GS-CLIP embedding, fused with the views' (real DDS)."""

from __future__ import annotations

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy not installed: scripts/setup.sh installs ROS 2 from PyPI")
from ddclip.msg import ObjectPoints, ObjectView, ShapeEmbedding  # noqa: E402
from ddclip.srv import Query  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import PointCloud2  # noqa: E402

from ddclip_core import load_model  # noqa: E402
from ddclip_core.fusion import fuse_embeddings  # noqa: E402
from ddclip_core.gaussians import (  # noqa: E402
    CloudSettings,
    GSCLIPEncoder,
    GSEncoderConfig,
    lift_points,
    prepare_cloud,
    save_gs_encoder,
)
from ddclip_ros.image_conversion import rgb_to_image  # noqa: E402
from ddclip_ros.node_process import stop_node  # noqa: E402
from ddclip_ros.pointcloud import arrays_to_pointcloud  # noqa: E402
from ddclip_ros.spin import spin_until  # noqa: E402
from tests.conftest import random_views  # noqa: E402
from tests.ros_node import launch, node_params, ros_env  # noqa: E402

RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
WEIGHT = 0.3


def ball(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    points = rng.standard_normal((n, 3)).astype(np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    colours = np.clip(0.5 + 0.5 * points[:, [0, 1, 2]], 0, 1).astype(np.float32)
    return points, colours


def test_clouds_are_embedded_fused_with_views_and_bad_ones_counted(tmp_path):
    env = ros_env(tmp_path)
    params = node_params(tmp_path)
    encoder = GSCLIPEncoder(GSEncoderConfig.tiny(embed_dim=32)).eval()
    save_gs_encoder(encoder, tmp_path / "gs.safetensors")
    params.update(gs_encoder=str(tmp_path / "gs.safetensors"), gaussian_weight=str(WEIGHT), max_points="500")
    process = launch(params, env)
    rclpy.init()
    node = rclpy.create_node("ddclip_points_client")
    try:
        embeddings: list[ShapeEmbedding] = []
        node.create_subscription(ShapeEmbedding, "ddclip/embeddings", embeddings.append, 50)
        points_pub = node.create_publisher(ObjectPoints, "ddclip/points", RELIABLE)
        views_pub = node.create_publisher(ObjectView, "ddclip/views", RELIABLE)
        query = node.create_client(Query, "ddclip/query")
        assert query.wait_for_service(timeout_sec=120), "the node did not start"
        assert spin_until(node, lambda: points_pub.get_subscription_count() > 0, 30)

        # A cloud alone, in a camera's optical frame: its Gaussian embedding, 500 of its 800 points, the
        # cloud turned to z up and prepared as the library does (prepare_cloud, lift, encode).
        points, colours = ball(800, seed=1)
        cloud = arrays_to_pointcloud(points, colours, frame_id="camera_color_optical_frame")
        points_pub.publish(ObjectPoints(track_id="ball", cloud=cloud))
        assert spin_until(node, lambda: any(e.track_id == "ball" for e in embeddings), 60)
        first = embeddings[-1]
        assert (first.num_views, first.num_points) == (0, 500)
        z_up = points[:, [2, 0, 1]] * [1, -1, -1]  # optical (x right, y down, z forward) -> x fwd, y left, z up
        sent = np.round(colours * 255) / 255  # colours travel as 8-bit rgb
        prepared = prepare_cloud(z_up, sent, CloudSettings(max_points=500))
        gs = encoder.encode(lift_points(prepared.points, prepared.colours)).numpy()[0]
        np.testing.assert_allclose(first.embedding, gs, atol=1e-4)

        # Then views of the same track: the embedding is the fusion of both.
        views = random_views(2, size=96, seed=5)
        for i, pixels in enumerate(views):
            views_pub.publish(ObjectView(track_id="ball", image=rgb_to_image(pixels), track_ended=i == 1))
        assert spin_until(node, lambda: embeddings[-1].num_views == 2, 60)
        fused = embeddings[-1]
        assert fused.num_points == 500
        # Fused embeddings name their fusion: the GS encoder and the weight, after the model's weights.
        assert fused.weights_id == f"{first.weights_id}" and fused.weights_id.endswith(f"+gs:{encoder.weights_id}@w0.3")
        mv = load_model(params["weights"], device="cpu").encode_views(list(views)).numpy()[0]
        expected = fuse_embeddings(mv, gs, WEIGHT)
        # The node encodes in its own batch and process (float noise ~1e-4); the fusion moves far more.
        assert float(np.dot(fused.embedding, expected)) > 0.99999
        assert max(float(np.dot(expected, mv)), float(np.dot(expected, gs))) < 0.999

        # A cloud without x/y/z and one too small are counted as bad input; the node keeps serving.
        broken = arrays_to_pointcloud(points[:50], colours[:50])
        broken.fields = [f for f in broken.fields if f.name != "z"]
        points_pub.publish(ObjectPoints(track_id="ball", cloud=broken))
        points_pub.publish(ObjectPoints(track_id="ball", cloud=arrays_to_pointcloud(points[:3], colours[:3])))
        points_pub.publish(ObjectPoints(track_id="", cloud=PointCloud2()))
        future = query.call_async(Query.Request(text="a ball", k=3, sources=Query.Request.SOURCE_SEEN))
        assert spin_until(node, future.done, 60)
        assert [r.track_id for r in future.result().results] == ["ball"]
        diagnostics: list[DiagnosticArray] = []
        node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 10)
        bad = lambda: diagnostics and _value(diagnostics[-1], "bad input messages dropped") == "3"  # noqa: E731
        assert spin_until(node, bad, 30), diagnostics[-1] if diagnostics else "no diagnostics"
        assert _value(diagnostics[-1], "clouds without colour") == "0"
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        output = stop_node(process)
    assert process.returncode == 0 and "Traceback" not in output, output
    assert "dropped a point cloud of track 'ball': PointCloud2 has no z field" in output


def _value(array: DiagnosticArray, key: str) -> str | None:
    return next((v.value for status in array.status for v in status.values if v.key == key), None)
