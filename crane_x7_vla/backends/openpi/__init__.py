"""The OpenPI backend: a π0-style flow-matching policy in JAX/Flax (nnx).

Modules: presets (model sizes), vit / gemma / model (the network), tokenizer,
transforms (action representation), openpi_import (openpi's released π0 parameters),
trainer (`train(cfg)`), policy (`load(...)` for deployment). jax is imported only here.
"""
