"""The cache stage: T5 text embeddings and VAE latents on disk, keyed by everything that
changes their bytes (keys.py), encoded by stage.py."""
