"""ReLayNet (Roy et al. 2017, Biomed. Opt. Express 8(8):3627): retinal layer + fluid segmentation of OCT B-scans.

An encoder-decoder of ``depth`` blocks: every encoder block is a 7x3 convolution (7 rows tall, 3 columns
wide, so it sees across layer boundaries), batch norm and ReLU, followed by 2x2 max pooling that keeps
the pooling indices; a bottleneck block; every decoder block unpools with the matching indices,
concatenates the encoder block's output (skip connection) and applies the same conv block; a 1x1
convolution gives the class scores.

With ``dense=True`` each block is a small dense block in the style of ReLayNet's successor QuickNAT:
``convs`` 7x3 convolutions, each seeing the concatenation of the block input and all earlier outputs,
fused by a 1x1 convolution. The paper's network is ``dense=False`` (one conv per block), 64 filters,
depth 3.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["ReLayNet", "ReLayNetBlock"]


class ReLayNetBlock(nn.Module):
    """Conv(kernel) -> BN -> ReLU, or a small dense block of such layers fused by a 1x1 conv.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: ``(rows, cols)`` of the convolutions (odd sizes).
        dense: use a dense block of ``convs`` layers instead of a single conv.
        convs: layers of the dense block.
        dropout: dropout probability after the block (0 = none).

    Raises:
        ValueError: for even kernel sizes or ``convs`` < 1.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Sequence[int] = (7, 3), dense: bool = False,
                 convs: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        kh, kw = (int(k) for k in kernel_size)
        if kh % 2 == 0 or kw % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        if convs < 1:
            raise ValueError(f"convs must be >= 1, got {convs}")
        pad = (kh // 2, kw // 2)

        def unit(cin: int, cout: int, k=(kh, kw), p=pad) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, k, padding=p, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        self.dense = dense
        if dense:
            self.layers = nn.ModuleList(unit(in_channels + i * out_channels, out_channels) for i in range(convs))
            self.fuse = unit(in_channels + convs * out_channels, out_channels, k=(1, 1), p=(0, 0))
        else:
            self.layers = nn.ModuleList([unit(in_channels, out_channels)])
        self.drop = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.dense:
            return self.drop(self.layers[0](x))
        feats = [x]
        for layer in self.layers:
            feats.append(layer(torch.cat(feats, dim=1)))
        return self.drop(self.fuse(torch.cat(feats, dim=1)))


class ReLayNet(nn.Module):
    """ReLayNet for 2D B-scans of any size (unpooling restores each encoder level's exact size).

    Args:
        in_channels: image channels.
        out_channels: number of classes.
        features: filters of every block (64 in the paper).
        depth: encoder blocks / pooling steps (3 in the paper).
        kernel_size: conv kernel ``(rows, cols)`` (7x3 in the paper).
        dense: QuickNAT-style dense blocks instead of single convs.
        dropout: dropout probability after each block.

    Returns (``forward``): logits ``(B, out_channels, H, W)`` for an input ``(B, in_channels, H, W)``.

    Raises:
        ValueError: for ``depth`` < 1 or a non-4D input.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 10, features: int = 64, depth: int = 3,
                 kernel_size: Sequence[int] = (7, 3), dense: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        kw = dict(kernel_size=kernel_size, dense=dense, dropout=dropout)
        self.encoders = nn.ModuleList(
            ReLayNetBlock(in_channels if i == 0 else features, features, **kw) for i in range(depth))
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2, 2)
        self.bottleneck = ReLayNetBlock(features, features, **kw)
        self.decoders = nn.ModuleList(ReLayNetBlock(2 * features, features, **kw) for _ in range(depth))
        self.classifier = nn.Conv2d(features, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"ReLayNet expects (B, C, H, W), got shape {tuple(x.shape)}")
        skips, indices = [], []
        for enc in self.encoders:
            x = enc(x)
            skips.append(x)
            x, idx = self.pool(x)
            indices.append(idx)
        x = self.bottleneck(x)
        for dec, skip, idx in zip(self.decoders, reversed(skips), reversed(indices)):
            x = self.unpool(x, idx, output_size=skip.shape[-2:])
            x = dec(torch.cat([x, skip], dim=1))
        return self.classifier(x)
