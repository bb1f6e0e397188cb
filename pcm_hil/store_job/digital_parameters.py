"""The network's parameters kept digital (biases, norms): everything not stored in cells.

They are stored in IEEE half precision (``PARAMETER_BITS``), on both sides of the
comparison: every decoded network, analog or digital, carries them rounded to fp16, and
every store is charged 16 bits for each.
"""
from __future__ import annotations

import torch
from torch import nn

PARAMETER_BITS = 16  # fp16
PARAMETER_DTYPE = torch.float16


def _digital(network: nn.Module, names: list[str]) -> list[torch.Tensor]:
    return [t for n, t in network.state_dict(keep_vars=True).items() if n not in names and t.dtype.is_floating_point]


def count(network: nn.Module, names: list[str]) -> int:
    """How many floating-point numbers of ``network`` are not stored in cells."""
    return sum(t.numel() for t in _digital(network, names))


def bits(network: nn.Module, names: list[str]) -> int:
    """Bits of those numbers at their stored precision."""
    return PARAMETER_BITS * count(network, names)


def as_stored(network: nn.Module, names: list[str]) -> nn.Module:
    """``network`` (in place) with those numbers rounded to their stored precision."""
    with torch.no_grad():
        for t in _digital(network, names):
            t.copy_(t.to(PARAMETER_DTYPE))
    return network
