"""Synthetic data sets in the exact on-disk format of real ones, with known ground truth.

Why: users without the real data (and CI) can run every experiment end to end on a
copy that the real loaders read unchanged.
"""

from bioexp.data.synth.ptbxl import generate_ptbxl

__all__ = ["generate_ptbxl"]
