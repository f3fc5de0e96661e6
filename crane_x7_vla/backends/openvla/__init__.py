"""OpenVLA backend: PyTorch, transformers and PEFT (the only place torch is imported)."""
