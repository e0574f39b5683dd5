"""torch tensors in and out, without importing torch at module level (refvit computes in NumPy).

- `check_return_tensors`: the processors' `return_tensors` argument: None or "np" (NumPy), "pt" (torch, when installed).
- `convert(batch, return_tensors)`: the processor's NumPy arrays as torch tensors sharing their memory
  (`torch.from_numpy`).
- `is_torch_tensor` / `to_numpy`: a torch tensor handed to a model is read in place through `.numpy()`; torch is
  recognised by the object's type module, so nothing is imported to check.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import InputError

NUMPY = (None, "np")
TORCH = "pt"


def check_return_tensors(return_tensors: Any) -> None:
    """InputError unless `return_tensors` is None, "np", or "pt" with torch importable (transformers' TensorType)."""
    value = getattr(return_tensors, "value", return_tensors)  # transformers' TensorType.PYTORCH -> "pt"
    if value in NUMPY:
        return
    if value == TORCH:
        _torch(return_tensors)
        return
    raise InputError(f"return_tensors={return_tensors!r}: refvit returns NumPy arrays ('np' or None) or, when torch "
                     "is installed, torch tensors ('pt')")


def convert(batch: dict, return_tensors: Any) -> dict:
    """The batch's arrays as `return_tensors` asks; "pt" wraps each array with torch.from_numpy (no copy)."""
    if getattr(return_tensors, "value", return_tensors) != TORCH:
        return batch
    torch = _torch(return_tensors)
    for key, value in batch.items():
        if isinstance(value, np.ndarray):
            batch[key] = torch.from_numpy(np.ascontiguousarray(value))
    return batch


def is_torch_tensor(x: Any) -> bool:
    """True for torch.Tensor (and Parameter), by the type's module: no torch import."""
    return type(x).__module__.split(".")[0] == "torch" and hasattr(x, "numpy")


def to_numpy(x: Any) -> np.ndarray:
    """A CPU torch tensor's memory as a NumPy array (detached first: a tensor that requires grad refuses .numpy())."""
    x = x.detach().cpu()  # .cpu() returns the tensor itself when it already is on the CPU
    try:
        return x.numpy()
    except (TypeError, RuntimeError):  # bfloat16 has no NumPy dtype: torch refuses; widen to float32 first
        return x.float().numpy()


def _torch(return_tensors: Any):
    try:
        import torch
    except ImportError:
        raise InputError(f"return_tensors={return_tensors!r} needs torch, which is not installed: use "
                         "return_tensors='np' (refvit's models take NumPy arrays)") from None
    return torch
