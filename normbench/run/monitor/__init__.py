"""What watches a run while it trains: the per-layer diagnostics (`diag.py`), the divergence
detectors (`divergence.py`) and collapse onto the unigram predictor (`collapse.py`)."""
