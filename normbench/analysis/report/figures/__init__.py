"""The report's figures (matplotlib, PNG and SVG): the runs' curves, stability maps and
per-layer profiles (`runs.py`), the mechanisms of instability (`mechanisms.py`), an LR
sweep's sensitivity (`sensitivity.py`), the probe's (`probe.py`) and the dashboard's layout
(`dashboard.py`), all in one style (`style.py`)."""
