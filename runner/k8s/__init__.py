"""Kubernetes artefacts derived from the TrainingJob schema (the CRD; see `crd.py`)."""
