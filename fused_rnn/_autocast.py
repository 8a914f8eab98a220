"""Autocast (torch.autocast) for the sequence functions.

The fused ops cast under autocast themselves (csrc/autocast.cpp, the Autocast dispatch keys):
inside a region every floating-point tensor argument but float64 runs in the region's dtype, as
torch casts its own RNNs. Python only has to let mixed dtypes through its checks there, and to
give the reference backend the same casts, so that both backends agree under autocast too.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

_AUTOCAST_DEVICE_TYPES = ("cpu", "cuda")


def autocast_dtype(x: Tensor) -> Optional[torch.dtype]:
    """The dtype an autocast region active on ``x``'s device type casts to, or None outside one."""
    device_type = x.device.type
    if device_type in _AUTOCAST_DEVICE_TYPES and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def _cast(value, dtype: torch.dtype):
    # Autocast's eligibility rule: floating point, not float64.
    if isinstance(value, Tensor) and value.is_floating_point() and value.dtype != torch.float64:
        return value.to(dtype)
    return value


def run_cast(fn: Callable, dtype: torch.dtype, device_type: str, *args, **kwargs):
    """``fn(*args, **kwargs)`` with the tensor arguments cast as the fused ops' autocast kernels
    cast them, and autocast off inside (the casts are done; the ops inside must not re-cast)."""
    args = tuple(_cast(a, dtype) for a in args)
    kwargs = {k: _cast(v, dtype) for k, v in kwargs.items()}
    with torch.autocast(device_type, enabled=False):
        return fn(*args, **kwargs)
