"""Y-Net (Farshad, Yeganeh, Gehlbach and Navab, MICCAI 2022, "Y-Net: A Spatiospectral Dual-Encoder Network for
Medical Image Segmentation"): retinal layer + fluid segmentation of OCT B-scans.

Two encoders read the image side by side: a *spatial* U-Net encoder (per level two 3x3 conv + BN + ReLU,
then 2x2 max pooling) and a *spectral* encoder of Fast Fourier Convolution blocks
(:class:`monai_oct.networks.ffc.FFCBlock`, global ratio 0.5, one per level, pooled the same way). Their
deepest features are concatenated and fused by a conv block (the bottleneck); a U-Net decoder
(transposed-conv up-sampling, concatenation with the *spatial* encoder's skip of that level, two 3x3 convs)
and a 1x1 convolution give the class scores.

Written for this project from the paper (the authors' code, ``azadef/ynet``, was read, not copied), on MONAI's
``TwoConv`` / ``UpCat`` blocks of ``BasicUNet`` (``UpCat`` pads an odd side, so any size >= ``2**depth`` works).
Simplified from the authors' network: widths double at every level (theirs stay at 4x the base width at
level 4), the spectral encoder starts with a plain 3x3 conv + BN + ReLU stem instead of a ``ratio_gin=0`` FFC,
its FFCs use 3x3 local kernels (theirs 1x1) and no local Fourier unit, the two bottlenecks are concatenated
channel-wise (the authors' ``cat_merge`` interleaves the two tensors' elements in memory order first, which
scrambles positions between the branches; left out), and the network returns logits (no softmax: the bundle's
loss takes logits).
The paper's network is ``channels=32, depth=4``.
"""

from __future__ import annotations

import torch
from monai.networks.blocks import Convolution
from monai.networks.nets.basic_unet import TwoConv, UpCat
from torch import nn

from monai_oct.networks.ffc import FFCBlock

__all__ = ["YNet", "check_min_size"]

_ACT = ("relu", {"inplace": True})


def check_min_size(network: nn.Module, size: list[int], depth: int) -> None:
    """Check that both sides of ``size`` ``(..., H, W)`` survive ``depth`` 2x2 max poolings (are >= ``2**depth``).

    Raises:
        ValueError: naming the size, the network and the smallest size that works.
    """
    h, w = (int(s) for s in size[-2:])
    f = 2 ** int(depth)
    if h < f or w < f:
        raise ValueError(f"image size {[h, w]} is too small for the {type(network).__name__}: it down-samples {depth} "
                         f"times, so both sides must be >= {f}; use e.g. --image_size \"{[max(h, f), max(w, f)]}\"")


@torch.jit.unused
def _check_input(network: nn.Module, x: torch.Tensor, depth: int) -> None:
    """The input checks of :class:`YNet` (left out of a TorchScript export)."""
    if x.ndim != 4:
        raise ValueError(f"{type(network).__name__} expects (B, C, H, W), got shape {tuple(x.shape)}")
    check_min_size(network, list(x.shape), depth)


class YNet(nn.Module):
    """Y-Net: spatial + spectral (FFC) dual encoder fused at the bottleneck, U-Net decoder; any size >= ``2**depth``.

    Args:
        in_channels: image channels.
        out_channels: number of classes.
        channels: width of the first level (``channels * 2**i`` at level ``i``, ``channels * 2**depth`` at the
            bottleneck); 32 in the paper.
        depth: pooling steps of each encoder (4 in the paper).
        ratio: global ratio of the FFC blocks (0.5 in the paper).
        dropout: dropout probability in the conv blocks.

    Returns (``forward``): logits ``(B, out_channels, H, W)`` for an input ``(B, in_channels, H, W)``.

    Raises:
        ValueError: for ``depth`` < 1, or (``forward``) a non-4D input or sides below ``2**depth``, naming the size.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 10, channels: int = 32, depth: int = 4,
                 ratio: float = 0.5, dropout: float = 0.0) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.depth = depth
        w = [channels * 2 ** i for i in range(depth + 1)]
        conv = dict(spatial_dims=2, act=_ACT, norm="batch", bias=False, dropout=dropout)
        self.spatial = nn.ModuleList([TwoConv(in_chns=in_channels, out_chns=w[0], **conv)]
                                     + [TwoConv(in_chns=w[i - 1], out_chns=w[i], **conv) for i in range(1, depth)])
        stem = Convolution(2, in_channels, w[0], act=_ACT, norm="batch", bias=False)
        self.spectral = nn.ModuleList([nn.Sequential(stem, FFCBlock(w[0], w[0], ratio=ratio))]
                                      + [FFCBlock(w[i - 1], w[i], ratio=ratio) for i in range(1, depth)])
        self.pool = nn.MaxPool2d(2, 2)
        self.fuse = TwoConv(in_chns=2 * w[depth - 1], out_chns=w[depth], **conv)
        self.reason: nn.Module = nn.Identity()  # GD-Net's graph reasoning at the bottleneck (monai_oct.networks.gdnet)
        self.decoders = nn.ModuleList(UpCat(in_chns=w[i + 1], cat_chns=w[i], out_chns=w[i], upsample="deconv", **conv)
                                      for i in reversed(range(depth)))
        self.classifier = nn.Conv2d(w[0], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args:
            x: ``(B, in_channels, H, W)``, sides >= ``2**depth``.

        Returns:
            logits ``(B, out_channels, H, W)``.
        """
        if not torch.jit.is_scripting():
            _check_input(self, x, self.depth)
        skips: list[torch.Tensor] = []
        s, f = x, x
        for i, (spatial, spectral) in enumerate(zip(self.spatial, self.spectral)):
            if i:
                s, f = self.pool(s), self.pool(f)
            s, f = spatial(s), spectral(f)
            skips.append(s)
        z = self.reason(self.fuse(torch.cat([self.pool(s), self.pool(f)], dim=1)))
        for i, dec in enumerate(self.decoders):
            z = dec(z, skips[len(skips) - 1 - i])
        return self.classifier(z)
