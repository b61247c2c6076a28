"""The run layer: one run's lifecycle, from the typed config to the run record."""
