"""Observability: Prometheus metrics (metrics.py, names in names.py), the run history
(runlog.py) and the offline run report (report.py)."""
