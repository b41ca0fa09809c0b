"""Fast Fourier Convolution (Chi, Jiang and Mu, NeurIPS 2020), the spectral building block of Y-Net and GD-Net.

An FFC splits its channels into a *local* part (ordinary 3x3 convolutions) and a *global* part whose
``global -> global`` path is a spectral transform: a 1x1 convolution halves the channels, a Fourier unit
takes ``torch.fft.rfft2`` of every channel, stacks real and imaginary parts as channels, mixes them with a
1x1 convolution + BN + ReLU (one convolution in frequency space = a filter seeing the whole image) and goes
back with ``irfft2`` at the input's exact size (odd or even sides), and a last 1x1 convolution restores the
width, applied to the sum of the reduced input and the Fourier unit's output. The four paths
(``l->l``, ``l->g``, ``g->l``, ``g->g``) are summed into the local and global outputs.

Written for this project (MONAI has no FFC). Simplified from the paper: the tensor is one ``(B, C, H, W)``
tensor whose first ``C - round(ratio * C)`` channels are local and the rest global (instead of a
``(local, global)`` tuple, so that TorchScript needs no optional branches); no local Fourier unit (the
paper's ``enable_lfu``), no strided or grouped FFC; every FFC has the same global ratio on input and output
(the networks put a plain convolution stem in front of the first FFC instead of a ``ratio_gin=0`` layer).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FourierUnit", "SpectralTransform", "FFC", "FFCBlock", "global_channels"]


def global_channels(channels: int, ratio: float) -> int:
    """The global (spectral) channels of an FFC with ``channels`` and global ratio ``ratio``.

    Raises:
        ValueError: when the ratio leaves the local or the global part empty (it must be in (0, 1) and
            ``channels`` large enough for both parts), naming both values.
    """
    cg = int(round(channels * ratio))
    if not 0 < cg < channels:
        raise ValueError(f"an FFC with {channels} channels and global ratio {ratio} has {cg} global channels; "
                         f"both parts need at least one (use a ratio in (0, 1) and >= 2 channels)")
    return cg


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class FourierUnit(nn.Module):
    """``irfft2(ReLU(BN(conv1x1([Re, Im](rfft2(x))))))``: a global filter (every output pixel sees the whole image).

    Args:
        in_channels: input channels.
        out_channels: output channels.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.mix = _conv_bn_relu(2 * in_channels, 2 * out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args:
            x: ``(B, in_channels, H, W)``, any H, W.

        Returns:
            ``(B, out_channels, H, W)``.
        """
        h, w = x.shape[-2], x.shape[-1]
        spec = torch.fft.rfft2(x.float(), norm="ortho")  # (B, C, H, W // 2 + 1), complex; FFT in float32 under autocast
        z = self.mix(torch.cat([spec.real, spec.imag], dim=1).to(x.dtype))
        z = torch.complex(z[:, : self.out_channels].float(), z[:, self.out_channels:].float())
        return torch.fft.irfft2(z, s=(h, w), norm="ortho").to(x.dtype)


class SpectralTransform(nn.Module):
    """FFC's ``global -> global`` path: 1x1 conv to half the width, a :class:`FourierUnit`, their sum, 1x1 conv.

    Args:
        in_channels: input channels.
        out_channels: output channels (>= 2).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = max(1, out_channels // 2)
        self.reduce = _conv_bn_relu(in_channels, mid)
        self.fourier = FourierUnit(mid, mid)
        self.expand = nn.Conv2d(mid, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduce(x)
        return self.expand(x + self.fourier(x))


class FFC(nn.Module):
    """Fast Fourier Convolution on a tensor whose last ``round(ratio * C)`` channels are global.

    Args:
        in_channels: input channels (local + global).
        out_channels: output channels (local + global).
        kernel_size: odd kernel of the three spatial paths (3 in Y-Net).
        ratio: global ratio of the input and the output (``ratio_gin = ratio_gout``; 0.5 in Y-Net).

    Raises:
        ValueError: for an even kernel or a ratio that leaves a part empty.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, ratio: float = 0.5) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        in_g, out_g = global_channels(in_channels, ratio), global_channels(out_channels, ratio)
        in_l, out_l = in_channels - in_g, out_channels - out_g
        self.in_local = in_l
        pad = kernel_size // 2
        self.l2l = nn.Conv2d(in_l, out_l, kernel_size, padding=pad, bias=False)
        self.g2l = nn.Conv2d(in_g, out_l, kernel_size, padding=pad, bias=False)
        self.l2g = nn.Conv2d(in_l, out_g, kernel_size, padding=pad, bias=False)
        self.g2g = SpectralTransform(in_g, out_g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args:
            x: ``(B, in_channels, H, W)``, local channels first.

        Returns:
            ``(B, out_channels, H, W)``, local channels first.
        """
        xl, xg = x[:, : self.in_local], x[:, self.in_local:]
        return torch.cat([self.l2l(xl) + self.g2l(xg), self.l2g(xl) + self.g2g(xg)], dim=1)


class FFCBlock(nn.Module):
    """FFC -> BN -> ReLU (Y-Net's ``FFC_BN_ACT``; one BN over both parts is the paper's two, BN being per channel).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: odd kernel of the spatial paths.
        ratio: global ratio.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, ratio: float = 0.5) -> None:
        super().__init__()
        self.ffc = FFC(in_channels, out_channels, kernel_size, ratio)
        self.norm = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.ffc(x)))
