"""Builtin tiny models: real architectures with random weights, built offline on first use."""
