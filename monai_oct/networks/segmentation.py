"""Segmentation networks selectable by name: MONAI ``UNet`` / ``BasicUNet`` and :class:`ReLayNet`."""

from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from monai_oct.networks.checkpoint import load_weights  # re-exported: the one loader lives in checkpoint.py
from monai_oct.networks.relaynet import ReLayNet

__all__ = ["SEGMENTATION_NETWORKS", "segmentation_network", "resolve_network", "load_weights"]

#: names accepted by :func:`segmentation_network`.
SEGMENTATION_NETWORKS = ("unet", "basicunet", "relaynet")


def segmentation_network(name: str = "unet", in_channels: int = 1, out_channels: int = 10,
                         channels: Sequence[int] | None = None, dropout: float = 0.0, **kwargs: Any) -> nn.Module:
    """Build a 2D segmentation network that maps ``(B, in_channels, H, W)`` to logits ``(B, out_channels, H, W)``.

    Args:
        name: ``"unet"`` (MONAI ``UNet``, 2 residual units per level), ``"basicunet"`` (MONAI ``BasicUNet``)
            or ``"relaynet"`` (:class:`monai_oct.networks.relaynet.ReLayNet`); case-insensitive.
        in_channels: image channels.
        out_channels: number of classes.
        channels: widths: per level for ``unet`` (default ``(16, 32, 64, 128, 256)``, strides 2), the six
            ``features`` of ``basicunet`` (default ``(32, 32, 64, 128, 256, 32)``), or one value (the
            first is used) for ``relaynet`` (default 64).
        dropout: dropout probability.
        kwargs: passed to the network's constructor (e.g. ``num_res_units``, ``depth``, ``dense``).

    Returns:
        the network (untrained).

    Raises:
        ValueError: for an unknown name, naming the known ones.
    """
    key = str(name).lower().replace("-", "").replace("_", "")
    if key == "unet":
        from monai.networks.nets import UNet

        ch = tuple(channels) if channels else (16, 32, 64, 128, 256)
        kwargs.setdefault("num_res_units", 2)
        return UNet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels, channels=ch,
                    strides=(2,) * (len(ch) - 1), dropout=dropout, **kwargs)
    if key == "basicunet":
        from monai.networks.nets import BasicUNet

        feats = tuple(channels) if channels else (32, 32, 64, 128, 256, 32)
        return BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels, features=feats,
                         dropout=dropout, **kwargs)
    if key == "relaynet":
        feats = int(channels[0]) if channels else 64
        return ReLayNet(in_channels=in_channels, out_channels=out_channels, features=feats, dropout=dropout, **kwargs)
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
