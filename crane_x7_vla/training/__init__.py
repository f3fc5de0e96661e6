"""Training: the backend-neutral CLI, config, loop and checkpoints."""
