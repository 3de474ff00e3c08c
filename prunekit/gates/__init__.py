"""Gates: the relaxations (pure functions) and one module per gate kind, by registry."""

from prunekit.gates import bernoulli, crisp, dpp, hard_concrete  # noqa: F401  (register the kinds)
from prunekit.gates.base import Gate, create_gate, list_gates, mask_gate_name, register_gate
from prunekit.gates.relaxations import (
    bernoulli_gate,
    crisp_gate,
    hard_concrete_deterministic,
    hard_concrete_prob_nonzero,
    hard_concrete_sample,
    prune_basis,
)

__all__ = [
    "Gate",
    "bernoulli_gate",
    "create_gate",
    "crisp_gate",
    "hard_concrete_deterministic",
    "hard_concrete_prob_nonzero",
    "hard_concrete_sample",
    "list_gates",
    "mask_gate_name",
    "prune_basis",
    "register_gate",
]
