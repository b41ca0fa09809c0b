"""GD-Net (Cao, Zhou, Wu, Peng, Yan, Zhang and Jiang, Biomedical Signal Processing and Control 98:106702, 2024,
"GCN-Enhanced Spatial-Spectral Dual-Encoder Network for Simultaneous Segmentation of Retinal Layers and Fluid in
OCT Images").

The paper's network is a U-shaped encoder-decoder with a spatial encoder and a Fast Fourier encoder (the
Y-Net idea) and a *multi-scale graph convolution* module between encoder and decoder that reasons over the
retina's layer topology; it is trained with a weighted region loss plus a contour loss.

Here: :class:`~monai_oct.networks.ynet.YNet`'s dual encoder and decoder with a :class:`MultiScaleGraphReasoning`
module on the fused bottleneck. Each scale is a GloRe-style global reasoning unit (Chen et al., CVPR 2019,
"Graph-Based Global Reasoning Networks"): a 1x1 convolution reduces the pixels' features to ``state`` channels,
another projects every pixel onto ``nodes`` graph nodes (a learned soft assignment); the node features
(the projection-weighted mean of the pixels' states) pass through one graph convolution (a learned
``nodes x nodes`` adjacency, then a ``state x state`` update with ReLU) and are projected back onto the pixels
with the same assignment; a 1x1 convolution + BN restores the width. Scale ``s`` works on the bottleneck
average-pooled by ``s`` and is up-sampled back; the scales' outputs are added to the input (residual).

Simplified from the paper (written for this project from its abstract; no code of the authors was read): the graph
module sits at the bottleneck only (no graph reasoning on the skips), its scales are average-pooled copies of
the one bottleneck, the adjacency is learned (not built from the layer order), the encoders and decoder are
this project's Y-Net (see its docstring), and the loss is the bundle's (Dice + cross-entropy, no contour loss).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from monai_oct.networks.ynet import YNet

__all__ = ["GloRe", "MultiScaleGraphReasoning", "GDNet"]


class GloRe(nn.Module):
    """Global reasoning unit without its residual: pixels -> ``nodes`` graph nodes -> one GCN layer -> pixels.

    Args:
        channels: input (and output) channels.
        nodes: graph nodes.
        state: channels of a node's state (default ``channels // 2``).

    Returns (``forward``): the reasoning term ``(B, channels, H, W)`` (the caller adds it to its input).
    """

    def __init__(self, channels: int, nodes: int = 16, state: int | None = None) -> None:
        super().__init__()
        s = int(state or max(1, channels // 2))
        self.state = nn.Conv2d(channels, s, 1)
        self.project = nn.Conv2d(channels, nodes, 1)
        self.adjacency = nn.Conv1d(nodes, nodes, 1)  # node-wise: mixes the nodes (a learned adjacency)
        self.update = nn.Conv1d(s, s, 1, bias=False)  # channel-wise: the GCN's weight
        self.out = nn.Sequential(nn.Conv2d(s, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        states = self.state(x).flatten(2)  # (B, S, HW)
        assign = self.project(x).flatten(2)  # (B, N, HW)
        v = torch.bmm(assign, states.transpose(1, 2)) / float(h * w)  # (B, N, S) node features
        v = v + self.adjacency(v)  # GCN: (I + A) V ...
        v = F.relu(self.update(v.transpose(1, 2)))  # ... W, ReLU -> (B, S, N)
        y = torch.bmm(v, assign).view(b, -1, h, w)  # back onto the pixels
        return self.out(y)


class MultiScaleGraphReasoning(nn.Module):
    """``x + sum_s up(GloRe_s(avgpool_s(x)))``: global reasoning at several scales of one feature map.

    Args:
        channels: channels of the feature map.
        scales: average-pooling factors (1 = the map itself).
        nodes: graph nodes of each unit.

    Raises:
        ValueError: for no scales or a scale < 1.
    """

    def __init__(self, channels: int, scales: Sequence[int] = (1, 2), nodes: int = 16) -> None:
        super().__init__()
        if not scales or min(scales) < 1:
            raise ValueError(f"scales must be one or more factors >= 1, got {scales}")
        self.scales = [int(s) for s in scales]
        self.units = nn.ModuleList(GloRe(channels, nodes) for _ in self.scales)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        out = x
        for i, unit in enumerate(self.units):
            s = self.scales[i]
            if s == 1:
                out = out + unit(x)
            else:
                small = F.adaptive_avg_pool2d(x, [max(1, h // s), max(1, w // s)])
                out = out + F.interpolate(unit(small), size=[h, w], mode="bilinear", align_corners=False)
        return out


class GDNet(YNet):
    """GD-Net: :class:`~monai_oct.networks.ynet.YNet` with :class:`MultiScaleGraphReasoning` on the fused bottleneck.

    Args:
        in_channels: image channels.
        out_channels: number of classes.
        channels: width of the first level (see :class:`YNet`).
        depth: pooling steps of each encoder.
        ratio: global ratio of the FFC blocks.
        dropout: dropout probability in the conv blocks.
        scales: average-pooling factors of the graph reasoning scales.
        nodes: graph nodes per scale.

    Returns (``forward``): logits ``(B, out_channels, H, W)``.

    Raises:
        ValueError: as :class:`YNet`, or for bad ``scales``.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 10, channels: int = 32, depth: int = 4,
                 ratio: float = 0.5, dropout: float = 0.0, scales: Sequence[int] = (1, 2), nodes: int = 16) -> None:
        super().__init__(in_channels, out_channels, channels, depth, ratio, dropout)
        self.reason = MultiScaleGraphReasoning(channels * 2 ** depth, scales, nodes)
