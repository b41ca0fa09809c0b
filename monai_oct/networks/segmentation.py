"""Segmentation networks selectable by name: MONAI ``UNet`` / ``BasicUNet``, :class:`ReLayNet`, :class:`YNet` and
:class:`GDNet`."""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from monai.networks.nets import UNet
from torch import nn

from monai_oct.networks.checkpoint import load_weights  # re-exported: the one loader lives in checkpoint.py
from monai_oct.networks.gdnet import GDNet
from monai_oct.networks.relaynet import ReLayNet
from monai_oct.networks.sizes import check_divisible
from monai_oct.networks.ynet import YNet, check_min_size

__all__ = ["SEGMENTATION_NETWORKS", "SizeCheckedUNet", "segmentation_network", "resolve_network", "load_weights", "size_factor",
           "check_segmentation_size"]

#: names accepted by :func:`segmentation_network`.
SEGMENTATION_NETWORKS = ("unet", "basicunet", "relaynet", "ynet", "gdnet")


def size_factor(network: nn.Module) -> int:
    """What the sides of an input must divide by for ``network``: the product of a MONAI ``UNet``'s strides; 1 for
    networks that take any size (``BasicUNet`` pads odd sides, ``ReLayNet`` unpools to each level's exact size,
    ``YNet`` / ``GDNet`` pad odd sides in their decoder; they need sides >= ``2**depth``, which
    :func:`check_segmentation_size` checks)."""
    if isinstance(network, UNet):
        return math.prod(int(s) if not isinstance(s, Sequence) else int(s[0]) for s in network.strides)
    return 1


def check_segmentation_size(network: nn.Module, size: Sequence[int]) -> None:
    """Check that ``network`` can take images of ``size`` ``(..., H, W)``: the segmentation twin of
    :func:`monai_oct.networks.diffusion.check_image_size`.

    Raises:
        ValueError: naming the size, the factor it must divide by (or, for a ``YNet`` / ``GDNet``, the smallest side)
            and the nearest sizes that work.
    """
    if isinstance(network, YNet):
        check_min_size(network, list(size), network.depth)
    f = size_factor(network)
    check_divisible(size, f, f"the {type(network).__name__} down-samples {int(math.log2(f))} times")


@torch.jit.unused
def _check_input(network: nn.Module, x: torch.Tensor) -> None:
    """:func:`check_segmentation_size` on a batch (left out of a TorchScript export)."""
    if x.ndim == 4:
        check_segmentation_size(network, x.shape)


class SizeCheckedUNet(UNet):
    """MONAI's ``UNet`` that checks its input size first (:func:`check_segmentation_size`), so that a wrong
    ``--image_size`` stops at the first batch with the size named, not deep inside the decoder with a tensor-size
    error; MONAI's trainers and evaluators call the network themselves, so the check is in the network.

    A subclass, not a forward pre-hook, so that TorchScript (``python -m monai.bundle ckpt_export``) compiles it: the
    check runs in eager mode only. Same parameters and state-dict keys as ``UNet``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args:
            x: ``(B, in_channels, H, W)``, sides divisible by the product of the strides.

        Returns:
            logits ``(B, out_channels, H, W)``.

        Raises:
            ValueError: for a size the UNet cannot take, naming it and sizes that work.
        """
        if not torch.jit.is_scripting():
            _check_input(self, x)
        return self.model(x)


def segmentation_network(name: str = "unet", in_channels: int = 1, out_channels: int = 10,
                         channels: Sequence[int] | None = None, dropout: float = 0.0, **kwargs: Any) -> nn.Module:
    """Build a 2D segmentation network that maps ``(B, in_channels, H, W)`` to logits ``(B, out_channels, H, W)``.

    Args:
        name: ``"unet"`` (MONAI ``UNet``, 2 residual units per level), ``"basicunet"`` (MONAI ``BasicUNet``)
            ``"relaynet"`` (:class:`monai_oct.networks.relaynet.ReLayNet`), ``"ynet"``
            (:class:`monai_oct.networks.ynet.YNet`) or ``"gdnet"`` (:class:`monai_oct.networks.gdnet.GDNet`);
            case-insensitive.
        in_channels: image channels.
        out_channels: number of classes.
        channels: widths: per level for ``unet`` (default ``(16, 32, 64, 128, 256)``, strides 2), the six
            ``features`` of ``basicunet`` (default ``(32, 32, 64, 128, 256, 32)``), or one value (the
            first is used) for ``relaynet`` (default 64) and for ``ynet`` / ``gdnet`` (the first level's width,
            default 32).
        dropout: dropout probability.
        kwargs: passed to the network's constructor (e.g. ``num_res_units``, ``depth``, ``dense``).

    Returns:
        the network (untrained); a ``unet`` checks its input size first (:func:`check_segmentation_size`).

    Raises:
        ValueError: for an unknown name, naming the known ones.
    """
    key = str(name).lower().replace("-", "").replace("_", "")
    if key == "unet":
        ch = tuple(channels) if channels else (16, 32, 64, 128, 256)
        kwargs.setdefault("num_res_units", 2)
        return SizeCheckedUNet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels, channels=ch,
                               strides=(2,) * (len(ch) - 1), dropout=dropout, **kwargs)
    if key == "basicunet":
        from monai.networks.nets import BasicUNet

        feats = tuple(channels) if channels else (32, 32, 64, 128, 256, 32)
        return BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels, features=feats,
                         dropout=dropout, **kwargs)
    if key == "relaynet":
        feats = int(channels[0]) if channels else 64
        return ReLayNet(in_channels=in_channels, out_channels=out_channels, features=feats, dropout=dropout, **kwargs)
    if key in ("ynet", "gdnet"):
        net = YNet if key == "ynet" else GDNet
        return net(in_channels=in_channels, out_channels=out_channels, channels=int(channels[0]) if channels else 32,
                   dropout=dropout, **kwargs)
    raise ValueError(f"unknown segmentation network {name!r}; choose one of {', '.join(SEGMENTATION_NETWORKS)}")


def resolve_network(spec: str | nn.Module, **kwargs: Any) -> nn.Module:
    """A network from a module (returned as is) or a name (built by :func:`segmentation_network` with ``kwargs``).

    Lets a bundle's ``network`` entry be either the module MONAI Label expects or a name given on the
    command line (``--network relaynet``).

    Raises:
        ValueError: for an unknown name.
        TypeError: for anything else.
    """
    if isinstance(spec, nn.Module):
        return spec
    if isinstance(spec, str):
        return segmentation_network(spec, **kwargs)
    raise TypeError(f"network must be a torch module or one of {SEGMENTATION_NETWORKS}, got {type(spec).__name__}")
