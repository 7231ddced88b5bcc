"""The evaluation's errors, in a module of their own: the CLI reports them without importing torch-fidelity (which
imports torchvision and torch._dynamo, about 2.5 s of CPU in every sample and report process)."""

from __future__ import annotations


class FIDError(RuntimeError):
    """FID cannot be computed as asked (missing weights, mismatched statistics, too few samples…)."""


class ProtocolMismatchError(ValueError):
    """Two FID numbers measured under different protocols were about to be compared."""
