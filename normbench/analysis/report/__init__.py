"""The reports built from records: `normbench compare` (`compare.py`), its page (`page.py`),
figures (`figures/`), where it may be written (`outdir.py`), the W&B dashboard it specifies
(`dashboard.py`) and `normbench dashboard`, which publishes it (`wandb_report.py`); and
`normbench probe`'s task, whose record gets tables, figures and verdicts (`probe.py`)."""
