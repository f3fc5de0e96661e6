"""ROS 2 nodes (rclpy is imported only here)."""
