"""The OpenPI backend: a π0-style flow-matching policy in JAX/Flax (nnx).

Modules: presets (model sizes), vit / gemma / model (the network), tokenizer,
transforms (action representation), conventions (this backend's or openpi's data
conventions), spm (SentencePiece model files), openpi_import (openpi checkpoints on disk),
export (a checkpoint in openpi's layout), trainer (`train(cfg)`), policy (`load(...)` for
deployment). jax is imported only here.
"""
