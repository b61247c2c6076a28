"""The model layer: the GPT (`gpt.py`), each placement's block (`placements.py`, the post-norm
family in `postnorm.py`, their base in `block.py`), each kind of norm (`kinds.py`), the fused
LM head and loss (`loss.py`), and the catalogue of `normbench list` (`catalog.py`)."""
