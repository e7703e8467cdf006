"""Sampling: batched decoding with grammar masks and SMC, generation, CSP, element infill.

- :mod:`.api`: ``sample``, ``predict_structure`` (CSP), ``Sample``, ``SampleSet``;
- :mod:`.decoder`: ``decode``, ``DecodeOptions`` (the one decoding loop, KV cache, SMC);
- :mod:`.constraints`: composition prompts, ``Constraint``, ``composition_branches``;
- :mod:`.substitution`: ``infill`` (element substitution in a template);
- :mod:`.output`: writing samples folders; :mod:`.cli`: ``sample``, ``csp``, ``infill``.

Import from the module that holds a name (``from crystalformer.sampling.api import sample``): this
package imports nothing, so the command line parses its options without loading torch.
"""
