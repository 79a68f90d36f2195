"""Start the ddclip node with config/ddclip.yaml; weights, bank, labels, topics and services as launch arguments.

    ros2 launch ddclip ddclip.launch.py weights:=/models/Four_1to6F_bs1600_LT6.ckpt \\
        bank:=/data/objaverse_bank views_topic:=/tracker/object_views namespace:=robot1

A launch argument left empty keeps the value of the parameter file. The parameter file's `/**:` key
applies under any namespace.
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
    "backend": "torch, or onnxruntime with an ONNX export folder as weights",
    "memory_path": "folder to keep the object memory in",
    "gs_encoder": "GS-CLIP encoder (gs_encoder.safetensors): enables point clouds on ddclip/points",
    "image_transport": "full frames from: raw (image) or compressed (image/compressed)",
}
NAMES = {  # launch argument: (the node's topic or service, description); the default keeps the node's name
    "views_topic": ("ddclip/views", "ObjectView input topic"),
    "image_topic": ("image", "full camera frames (sensor_msgs/Image)"),
    "compressed_topic": ("image/compressed", "full camera frames (sensor_msgs/CompressedImage)"),
    "detections_topic": ("ddclip/detections", "TrackedDetections input topic (boxes of the frames)"),
    "vision_detections_topic": ("detections", "vision_msgs/Detection2DArray input topic"),
    "points_topic": ("ddclip/points", "ObjectPoints input topic (with gs_encoder)"),
    "embeddings_topic": ("ddclip/embeddings", "ShapeEmbedding output topic"),
    "matches_topic": ("ddclip/matches", "ObjectMatches output topic"),
    "annotated_topic": ("ddclip/annotated", "annotated frames output topic (with annotate)"),
    "objects_topic": ("ddclip/objects", "the memory's objects as rviz markers (visualization_msgs/MarkerArray)"),
    "query_service": ("ddclip/query", "language query service"),
    "enroll_service": ("ddclip/enroll", "enrolment service"),
    "forget_service": ("ddclip/forget", "forget service"),
}


def _node(context, *_args, **_kwargs):
    overrides = {}
    for name in OVERRIDES:
        value = LaunchConfiguration(name).perform(context)
        if value:
            overrides[name] = value
    sim_time = LaunchConfiguration("use_sim_time").perform(context).lower()
    if sim_time:  # given: it wins; left empty: the parameter file's use_sim_time (or ROS's default, false)
        overrides["use_sim_time"] = sim_time in ("true", "1", "yes")
    return [
        Node(
            package="ddclip",
            executable="ddclip_node",
            name=LaunchConfiguration("node_name"),
            namespace=LaunchConfiguration("namespace"),
            output="screen",
            emulate_tty=True,
            parameters=[LaunchConfiguration("params_file"), overrides],
            remappings=[(name, LaunchConfiguration(argument)) for argument, (name, _) in NAMES.items()],
        )
    ]


def generate_launch_description() -> LaunchDescription:
    default_params = PathJoinSubstitution([FindPackageShare("ddclip"), "config", "ddclip.yaml"])
    declared = [
        DeclareLaunchArgument("params_file", default_value=default_params, description="parameter YAML"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its names"),
        DeclareLaunchArgument("node_name", default_value="ddclip", description="name of the node"),
        DeclareLaunchArgument(
            "use_sim_time", default_value="", description="follow /clock (bag replay); empty: the parameter file's"
        ),
    ]
    declared += [DeclareLaunchArgument(n, default_value="", description=d) for n, d in OVERRIDES.items()]
    declared += [DeclareLaunchArgument(n, default_value=v, description=d) for n, (v, d) in NAMES.items()]
    return LaunchDescription([*declared, OpaqueFunction(function=_node)])
