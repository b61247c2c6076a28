"""The literature's claims, judged on records: the registry (`registry.py`), a verdict and
its thresholds (`verdict.py`), and the judges by what they read: the probe (`probe.py`,
`output_change.py`), training runs at fixed settings (`train.py`) and learning-rate sweeps
(`lr.py`, on the measures of `sweeps.py`)."""
