"""Stages: cache (text embeddings + latents to disk) and train. Each takes a RunContext."""
