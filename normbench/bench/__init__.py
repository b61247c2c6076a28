"""`make bench`: normbench's training step timed against plain PyTorch and nanoGPT.

A tool that stands above one run: it builds `Trainer`s (normbench/run/trainer.py) and times
their `step`. `step.py` is the command, `baseline.py` the references it measures against,
`diag.py` the cost of the per-layer diagnostics, `head.py` the LM head alone.
"""
