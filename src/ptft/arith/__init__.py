"""Modular arithmetic with a one-layer Transformer (the paper's v2; docs/paper.md section 9)."""
