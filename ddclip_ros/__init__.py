"""ddclip_ros: the thin ROS 2 layer over ddclip_core (messages in, ddclip_core calls, messages out)."""
