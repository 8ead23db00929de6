"""Observability: Prometheus metrics (metrics.py; every series named in names.py), cache
progress summed over workers (cacheprogress.py), progress lines and bars (progress.py), the
run history (runlog.py), the offline run report (report.py) and the dashboard renderer."""
