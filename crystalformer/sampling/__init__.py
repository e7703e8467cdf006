"""Sampling: batched decoding with grammar masks and SMC, generation, CSP, element infill."""

from __future__ import annotations

from .api import Sample, SampleSet, predict_structure, sample
from .constraints import Branch, Constraint, composition_branches, parse_composition
from .decoder import DecodeOptions, decode
from .substitution import Candidate, InfillResult, infill

__all__ = ["Branch", "Candidate", "Constraint", "DecodeOptions", "InfillResult", "Sample", "SampleSet",
           "composition_branches", "decode", "infill", "parse_composition", "predict_structure", "sample"]
