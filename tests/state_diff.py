"""Exact comparison of training states (nested dicts, lists and tuples of tensors, numpy arrays
and plain values), shared by the unit and end-to-end resume tests."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two nested states differ (exactly: bit for bit), with the size of each difference."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape or a.dtype != b.dtype:
            return [f"{path}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"]
        if torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan())
                                 and torch.equal(a.nan_to_num(), b.nan_to_num())):
            return []
        if a.is_floating_point():
            return [f"{path}: max |delta| {(a.double() - b.double()).abs().max().item():.3g}"]
        return [f"{path}: {int((a != b).sum())} of {a.numel()} elements differ"]
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return [] if np.array_equal(a, b) else [f"{path}: arrays differ"]
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{path}: keys {sorted(map(str, set(a) ^ set(b)))} in only one"]
        return [d for k in a for d in differences(a[k], b[k], f"{path}.{k}" if path else str(k))]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} vs {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} vs {b!r}"]
