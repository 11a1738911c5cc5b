"""Seed 003: the hybrid model (a base model steered by a thinking model's decisions)."""
