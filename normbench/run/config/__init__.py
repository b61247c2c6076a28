"""The typed configuration: its schema (`schema.py`), its checks (`checks.py`) and `resolve`
(`resolve.py`), which turns what Hydra composed into the checked, typed config."""
