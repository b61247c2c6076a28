"""Packed training: several runs of one architecture trained together (issue 34's pieces)."""
