"""Modular arithmetic with a one-layer Transformer (the paper's v2; PAPER.md section 9)."""
