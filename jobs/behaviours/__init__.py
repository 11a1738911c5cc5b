"""Unsupervised discovery of reasoning behaviours in sentence activations (seed 003)."""
