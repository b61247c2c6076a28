"""What a run leaves on disk: the run record (`writer.py`: config.yaml, metrics.jsonl,
events.jsonl, summary.json), `summary.py` (the schema of summary.json and the run's status),
checkpoints (`checkpoint.py`), which run a folder holds (`rundir.py`), and the one atomic
writer and sha256 (`files.py`)."""
