"""The data a run trains on: text to GPT-2 BPE tokens, cached (`tokens.py`), a reduced
vocabulary (`vocab.py`), and the batches drawn from the tokens (`batches.py`)."""
