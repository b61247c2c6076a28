"""The `norm` config group: where the normalization goes (placements) and what it is (kinds)."""

from normbench.norm.kinds import KINDS, Norm, make_norm
from normbench.norm.placements import PLACEMENTS, Block

__all__ = ["KINDS", "PLACEMENTS", "Block", "Norm", "make_norm"]
