"""Which dtype ``torch.autocast`` runs in, from the ``amp_dtype`` config key (and ``amp``, its older alias).

- ``amp_dtype: bfloat16``: bf16 autocast on CPU and CUDA (no loss scaling needed);
- ``amp_dtype: float16``: fp16 autocast, CUDA only (the trainer scales the loss with a ``GradScaler``);
- ``amp_dtype: null``: no autocast, unless the alias ``amp: true`` asks for float16 on CUDA (on CPU it has no
  float16 to use and does nothing, with a warning that names ``amp_dtype bfloat16``).
"""

from __future__ import annotations

import logging

import torch

__all__ = ["AMP_DTYPES", "autocast_dtype"]

logger = logging.getLogger(__name__)

#: accepted names of the autocast dtypes.
AMP_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
              "half": torch.float16}


def autocast_dtype(amp_dtype: str | torch.dtype | None = None, amp: bool = False,
                   device: str | torch.device | None = None) -> torch.dtype | None:
    """The autocast dtype for ``amp_dtype`` / ``amp`` on ``device``; None: run in float32.

    Args:
        amp_dtype: ``"bfloat16"`` (``"bf16"``), ``"float16"`` (``"fp16"``, ``"half"``), a torch dtype, or None
            (also ``"null"`` / ``"none"``, as a command line gives it).
        amp: the older switch: with ``amp_dtype`` None, True means float16 on CUDA; ignored on CPU (warning).
        device: where the network runs; None: not checked yet (the caller checks at run time).

    Returns:
        ``torch.bfloat16``, ``torch.float16`` or None.

    Raises:
        ValueError: for an unknown ``amp_dtype``, or float16 on a CPU device (CPU autocast has only bfloat16).
    """
    if isinstance(amp_dtype, str):
        name = amp_dtype.strip().lower()
        if name in ("", "null", "none"):
            amp_dtype = None
        elif name in AMP_DTYPES:
            amp_dtype = AMP_DTYPES[name]
        else:
            raise ValueError(f"unknown amp_dtype {amp_dtype!r}; use bfloat16, float16 or null (no autocast)")
    if amp_dtype is not None and amp_dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"unknown amp_dtype {amp_dtype!r}; use bfloat16, float16 or null (no autocast)")
    kind = torch.device(device).type if device is not None else None
    if amp_dtype is None and amp:
        if kind == "cpu":
            logger.warning("amp: true has no effect on the CPU (no float16 autocast there); use --amp_dtype bfloat16")
            return None
        amp_dtype = torch.float16
    if amp_dtype == torch.float16 and kind == "cpu":
        raise ValueError("amp_dtype float16 needs a CUDA device, got cpu: use --amp_dtype bfloat16 (CPU and CUDA) "
                         "or --amp_dtype null")
    if amp_dtype is not None and kind is not None:
        logger.info("autocast %s on %s", str(amp_dtype).replace("torch.", ""), kind)
    return amp_dtype
