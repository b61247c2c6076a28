"""The analysis layer, computed from records after the runs: reading them (`records.py`),
statistics (`stats.py`), the summary table (`table.py`), LR sensitivity (`sensitivity.py`),
the claims (`claims/`) and the reports (`report/`: compare, the dashboard, the probe's)."""
