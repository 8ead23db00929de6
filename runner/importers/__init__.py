"""Converters from other trainers' configs into a TrainingJob (torch-free)."""
