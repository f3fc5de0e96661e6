"""The simulated CRANE-X7 (MuJoCo): scene, tasks and scripted expert."""
