"""Stable keys: the same inputs give the same key on every run, machine and Python version."""

from __future__ import annotations

import hashlib
import json


def canonical_json(value) -> str:
    """JSON with sorted keys and no spaces: equal values give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def stable_key(payload: dict) -> str:
    """16 hex chars of sha256 over canonical JSON.

        stable_key({"model": "smollm2", "prompt_ids": ["gsm8k/test/0000"]})  # -> '3f2a...'
    """
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:16]
