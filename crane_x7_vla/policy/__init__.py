"""Deployment without ROS: load_policy, safety filter, chunk execution, policy server."""
