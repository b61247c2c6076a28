"""The model layer: the GPT, each placement's block, each kind of norm, the fused loss."""

from normbench.model.gpt import GPT
from normbench.model.kinds import KINDS, Norm, make_norm
from normbench.model.placements import PLACEMENTS, Block

__all__ = ["GPT", "KINDS", "PLACEMENTS", "Block", "Norm", "make_norm"]
