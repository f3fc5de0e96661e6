"""Training: the backend-neutral config, loop and checkpoints (the `train` command: crane_x7_vla.cli.train)."""
