"""The catalogue's papers by number (shared PAPERS.md, docs/papers.md): their short names, for people.

Code cites papers by number (``@register("entropy", paper="73, 68")``, ``Paper: 42`` in
docstrings); :func:`cite` writes such numbers with the short names, as ``attnlab list`` prints them.
``tests/test_papers.py`` checks this table against docs/papers.md.
"""

from __future__ import annotations

import re

__all__ = ["SHORT_NAMES", "cite"]

SHORT_NAMES: dict[int, str] = {
    1: "Single attention layer, random features",
    2: "Tensor Brain",
    3: "Scan and Snap",
    4: "PAINT, imbalanced attention",
    5: "Circuit component reuse",
    6: "gCOG",
    7: "Pooling and attention (MLTP)",
    8: "Consciousness prior",
    9: "DependencyViT reversed attention",
    10: "NormGrad saliency",
    11: "FIT",
    12: "VAR, visual attention sink",
    13: "Concept depth",
    14: "EchoAtt",
    15: "BiFormer bi-level routing",
    16: "IR-Diffusion isolation attention",
    17: "DaViT channel attention",
    18: "A-STAR",
    19: "ConViT GPSA",
    20: "HaloNet blocked local attention",
    21: "HiLo",
    22: "DCAL",
    23: "Routing Transformer",
    24: "OAT",
    25: "SSMA fusion",
    26: "VHD/VHR",
    27: "Context-aware attention",
    28: "MoH mixture-of-head",
    29: "AKI modality-mutual attention",
    30: "AttenCraft",
    31: "LLM-Drop, what matters",
    32: "RCMHA",
    33: "Retrieval heads",
    34: "ITHP",
    35: "Implicit multimodal alignment",
    36: "PrimeComposer",
    37: "UNIP",
    38: "DSF",
    39: "DisenDiff attention calibration",
    40: "Visual search asymmetry",
    41: "In-context classification",
    42: "Neighborhood attention",
    43: "Multi-scale self-guided attention",
    44: "Structured diffusion guidance",
    45: "Talking heads",
    46: "MEDUSA",
    47: "ACT, hidden sinks",
    48: "Wider and deeper LLM evaluators",
    49: "Cross-modal information flow",
    50: "Kronecker / tensor attention",
    51: "Selective attention",
    52: "ViT attention visual analytics",
    53: "Information pathways (SSA)",
    54: "Uni-Perceiver",
    55: "Selective visual representations",
    56: "Zoology MQAR",
    57: "Circuit analysis at scale",
    58: "TransNeXt aggregated attention",
    59: "Vision-language integration in the brain",
    60: "Topic segmentation",
    61: "Sentence attention block",
    62: "See through their minds",
    63: "Combiner",
    64: "F-LMM",
    65: "Denoising task routing",
    66: "Convergent learning",
    67: "MULTI-LANE token summarising",
    68: "Active-dormant heads",
    69: "Influential neuron path",
    70: "CrossFormer LSDA",
    71: "Feature + cost aggregation",
    72: "Multi-level V-cycle training",
    73: "σReparam / entropy collapse",
    74: "OneFormer",
    75: "FinalMLP",
}


def cite(numbers: str) -> str:
    """Paper numbers as text (``"73, 68"``) with their short names: ``"73 (…); 68 (…)"``; ``""`` stays ``""``.

    Example:
        >>> cite("33")
        '33 Retrieval heads'
    """
    out = []
    for n in re.findall(r"\d+", numbers):
        if int(n) not in SHORT_NAMES:
            raise ValueError(f"paper {n} is not in the catalogue (1..{max(SHORT_NAMES)}): give a number from docs/papers.md")
        out.append(f"{n} {SHORT_NAMES[int(n)]}")
    return "; ".join(out)
