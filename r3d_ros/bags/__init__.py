"""rosbag2 files through ``rosbags`` (no ROS install, no rclpy here): reading, writing, QoS, playback timing,
and evaluation bags written straight from synthetic scenes."""
