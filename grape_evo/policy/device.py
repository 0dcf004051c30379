"""Device selection for policies."""

from __future__ import annotations

import torch


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """Turn a device name into a `torch.device`, checking that it is usable here.

    ``None`` or ``"auto"``: CUDA if available, else CPU. ``"cuda"`` / ``"cuda:N"`` when CUDA is
    unavailable (or N is out of range), or ``"mps"`` when MPS is unavailable, raise `ValueError`.
    """
    if name is None or (isinstance(name, str) and name.strip().lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name.strip().lower() if isinstance(name, str) else name)
    except (RuntimeError, ValueError) as err:
        raise ValueError(
            f"unknown device {name!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
        ) from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {str(name)!r} requested but CUDA is not available on this machine "
                f"(torch {torch.__version__}); use device='cpu' or 'auto'"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {str(name)!r} requested but only {torch.cuda.device_count()} "
                "CUDA device(s) are visible"
            )
    if device.type == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        raise ValueError(f"device {str(name)!r} requested but MPS is not available")
    return device
