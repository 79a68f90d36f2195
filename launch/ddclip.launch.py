"""Start the ddclip node with config/ddclip.yaml; weights, bank, labels and topics as launch arguments.

    ros2 launch ddclip ddclip.launch.py weights:=/models/Four_1to6F_bs1600_LT6.ckpt \\
        bank:=/data/objaverse_bank views_topic:=/tracker/object_views

A launch argument left empty keeps the value of the parameter file.
"""

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription

OVERRIDES = {
    "weights": "model weights file (published .ckpt, OpenCLIP file or ddclip export)",
    "bank": "embedding bank folder",
    "labels": "label set: lvis or a label file",
    "device": "auto, cpu, cuda, cuda:N",
    "memory_path": "folder to keep the object memory in",
    "gs_encoder": "GS-CLIP encoder (gs_encoder.safetensors): enables point clouds on ddclip/points",
}
TOPICS = {  # launch argument: (the node's topic, description); the default keeps the node's name
    "views_topic": ("ddclip/views", "ObjectView input topic"),
    "image_topic": ("image", "full camera frames (sensor_msgs/Image)"),
    "compressed_topic": ("image/compressed", "full camera frames (sensor_msgs/CompressedImage)"),
    "detections_topic": ("ddclip/detections", "TrackedDetections input topic (boxes of the frames)"),
    "vision_detections_topic": ("detections", "vision_msgs/Detection2DArray input topic"),
    "points_topic": ("ddclip/points", "ObjectPoints input topic (with gs_encoder)"),
    "embeddings_topic": ("ddclip/embeddings", "ShapeEmbedding output topic"),
    "matches_topic": ("ddclip/matches", "ObjectMatches output topic"),
    "annotated_topic": ("ddclip/annotated", "annotated frames output topic (with annotate)"),
}


def _node(context, *_args, **_kwargs):
    overrides = {}
    for name in OVERRIDES:
        value = LaunchConfiguration(name).perform(context)
        if value:
            overrides[name] = value
    return [
        Node(
            package="ddclip",
            executable="ddclip_node",
            name="ddclip",
            output="screen",
            emulate_tty=True,
            parameters=[LaunchConfiguration("params_file"), overrides],
            remappings=[(topic, LaunchConfiguration(argument)) for argument, (topic, _) in TOPICS.items()],
        )
    ]


def generate_launch_description() -> LaunchDescription:
    default_params = PathJoinSubstitution([FindPackageShare("ddclip"), "config", "ddclip.yaml"])
    declared = [DeclareLaunchArgument("params_file", default_value=default_params, description="parameter YAML")]
    declared += [DeclareLaunchArgument(n, default_value="", description=d) for n, d in OVERRIDES.items()]
    declared += [DeclareLaunchArgument(n, default_value=v, description=d) for n, (v, d) in TOPICS.items()]
    return LaunchDescription([*declared, OpaqueFunction(function=_node)])
