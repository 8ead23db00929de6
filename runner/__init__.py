"""Declarative runner for fine-tuning diffusion models (PixArt Sigma first)."""

__version__ = "0.1.0"
