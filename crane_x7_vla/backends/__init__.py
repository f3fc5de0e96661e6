"""Model backends: openvla (torch only) and openpi (jax only)."""
