"""The mask-conditioned diffusion UNet, built from a bundle's settings (its noise schedulers: :mod:`monai_oct.schedulers`).

The condition (an encoded label map, :mod:`monai_oct.transforms.encoding`) is concatenated to the noisy
image along the channels (``DiffusionInferer(mode="concat")``), so the UNet sees
``image_channels + condition_channels`` input channels and predicts ``image_channels`` (epsilon, v or x0).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from monai.networks.nets import DiffusionModelUNet

from monai_oct.networks.sizes import check_divisible

__all__ = ["ConditionalDiffusionUNet", "conditional_diffusion_unet", "check_image_size"]


class ConditionalDiffusionUNet(DiffusionModelUNet):
    """MONAI's ``DiffusionModelUNet`` whose ``timesteps`` may also be a number or a list.

    MONAI's UNet takes only a 1-D tensor of timesteps. ``python -m monai.bundle verify_net_in_out`` can pass
    the extra forward argument only as a command-line literal (``--extra_forward_args "{'timesteps': 0}"``),
    never a tensor, so this class turns what it gets into the tensor MONAI's network expects; the weights,
    their names and everything else are MONAI's (a ``DiffusionModelUNet`` state dict loads unchanged).
    """

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor | int | Sequence[int], *args: Any, **kwargs: Any) -> torch.Tensor:
        """Args:
            x: the noisy image and its condition, ``(N, in_channels, H, W)``.
            timesteps: a tensor ``(N,)``, or a number (every sample at that step) or a list of N numbers.
            args, kwargs: as ``DiffusionModelUNet.forward`` (``context``, ``class_labels``, ...).

        Returns:
            the prediction ``(N, out_channels, H, W)``.
        """
        t = torch.as_tensor(timesteps, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        return super().forward(x, t, *args, **kwargs)


def _groups(channels: Sequence[int], preferred: int = 32) -> int:
    """The largest group count <= ``preferred`` (a power of two) dividing every width (GroupNorm needs it)."""
    g = preferred
    while g > 1 and any(c % g for c in channels):
        g //= 2
    return g


def conditional_diffusion_unet(
    image_channels: int = 1,
    condition_channels: int = 0,
    channels: Sequence[int] = (32, 64, 64, 128),
    attention_levels: Sequence[bool] | None = None,
    num_res_blocks: int | Sequence[int] = 1,
    num_head_channels: int | Sequence[int] | None = None,
    use_flash_attention: bool = True,
    norm_num_groups: int | None = None,
    **kwargs: Any,
) -> ConditionalDiffusionUNet:
    """A 2D ``DiffusionModelUNet`` (:class:`ConditionalDiffusionUNet`) for concat conditioning.

    Args:
        image_channels: channels of the generated image (1 for a grey B-scan or a scalar-encoded mask).
        condition_channels: channels of the encoded condition (0: unconditional, e.g. the mask DDPM;
            ``condition_channels(C, mode)`` for a label map).
        channels: widths per level; ``len(channels) - 1`` down-samplings (image sides must divide by
            ``2 ** (len(channels) - 1)``).
        attention_levels: self-attention per level; None: only at the lowest level (cheap at small sizes).
        num_res_blocks: residual blocks per level.
        num_head_channels: channels per attention head; None: ``min(32, width)`` at each level. Must divide the
            widths of the attention levels.
        use_flash_attention: use ``torch.nn.functional.scaled_dot_product_attention`` (fused, memory
            efficient; also works on CPU, where it picks the math/flash kernel torch has).
        norm_num_groups: GroupNorm groups; None: the largest power of two <= 32 dividing every width.
        kwargs: passed to ``DiffusionModelUNet`` (e.g. ``resblock_updown``, ``include_fc``).

    Returns:
        the untrained network, ``in_channels = image_channels + condition_channels``.

    Raises:
        ValueError: for mismatched lengths, head channels that do not divide a width, or negative channel counts.
    """
    channels = tuple(int(c) for c in channels)
    if image_channels < 1 or condition_channels < 0:
        raise ValueError(f"image_channels must be >= 1 and condition_channels >= 0, got {image_channels}, {condition_channels}")
    if attention_levels is None:
        attention_levels = (False,) * (len(channels) - 1) + (True,)
    attention_levels = tuple(bool(a) for a in attention_levels)
    if len(attention_levels) != len(channels):
        raise ValueError(f"attention_levels {attention_levels} must have one entry per level of channels {channels}")
    if num_head_channels is None:
        num_head_channels = tuple(min(32, c) for c in channels)
    heads = (num_head_channels,) * len(channels) if isinstance(num_head_channels, int) else tuple(num_head_channels)
    for c, h, a in zip(channels, heads, attention_levels):
        if a and c % h:
            raise ValueError(f"num_head_channels {h} does not divide the width {c} of an attention level (channels {channels})")
    groups = norm_num_groups or _groups(channels)
    return ConditionalDiffusionUNet(
        spatial_dims=2,
        in_channels=image_channels + condition_channels,
        out_channels=image_channels,
        channels=channels,
        attention_levels=attention_levels,
        num_res_blocks=num_res_blocks,
        num_head_channels=heads,
        norm_num_groups=groups,
        use_flash_attention=bool(use_flash_attention),
        **kwargs,
    )


def check_image_size(network: DiffusionModelUNet, size: Sequence[int]) -> None:
    """Check that a UNet with ``len(channels) - 1`` down-samplings can take images of ``size`` ``(H, W)``.

    Raises:
        ValueError: naming the size, the factor it must divide by and the nearest sizes that work.
    """
    levels = len(getattr(network, "block_out_channels", ())) or 1
    check_divisible(size, 2 ** (levels - 1), f"the UNet down-samples {levels - 1} times with channels "
                    f"{tuple(getattr(network, 'block_out_channels', ()))}")


