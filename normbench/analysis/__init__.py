"""The analysis layer: reading run records, statistics, claims, the probe, reports, figures."""
