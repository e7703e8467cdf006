"""Sampling: batched decoding with grammar masks and SMC, generation, CSP, element infill."""

from __future__ import annotations

from .api import Sample, SampleSet, predict_structure, sample
from .constraints import Branch, Constraint, composition_branches, parse_composition
from .decoder import DecodeOptions, decode

__all__ = ["Branch", "Constraint", "DecodeOptions", "Sample", "SampleSet", "composition_branches", "decode",
           "parse_composition", "predict_structure", "sample"]
