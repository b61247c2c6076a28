"""normbench: where should the normalization go in a Transformer, and why does it diverge?"""

__version__ = "0.1.0"
