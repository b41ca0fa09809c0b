"""ReLayNet shapes, the network factory and checkpoint loading."""

from __future__ import annotations

import pytest
import torch

from monai_oct.networks.relaynet import ReLayNet
from monai_oct.networks.segmentation import load_weights, resolve_network, segmentation_network


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("size", [(64, 128), (50, 37)])
def test_relaynet_shapes(dense, size):
    net = ReLayNet(in_channels=1, out_channels=10, features=8, dense=dense).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 1, *size))
    assert out.shape == (2, 10, *size)


def test_relaynet_structure_follows_paper():
    net = ReLayNet()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size for c in convs[:-1]] == [(7, 3)] * 7  # 3 encoders + bottleneck + 3 decoders
    assert convs[-1].kernel_size == (1, 1) and convs[-1].out_channels == 10
    assert net.decoders[0].layers[0][0].in_channels == 128  # unpooled 64 + skip 64
    with pytest.raises(ValueError, match="odd"):
        ReLayNet(kernel_size=(6, 3))
    with pytest.raises(ValueError, match="B, C, H, W"):
        net(torch.zeros(1, 8, 8))


@pytest.mark.parametrize("name", ["unet", "basicunet", "relaynet", "ReLayNet"])
def test_factory(name):
    net = segmentation_network(name, in_channels=1, out_channels=10,
                               channels=(8, 8, 16, 16, 32, 8) if "basic" in name else (8, 16, 32))
    with torch.no_grad():
        assert net.eval()(torch.randn(1, 1, 32, 64)).shape == (1, 10, 32, 64)


def test_factory_errors_and_resolve():
    with pytest.raises(ValueError, match="unet, basicunet, relaynet"):
        segmentation_network("vnet")
    net = segmentation_network("relaynet", channels=[4])
    assert resolve_network(net) is net
    assert isinstance(resolve_network("relaynet", channels=[4]), ReLayNet)
    with pytest.raises(TypeError):
        resolve_network(3)


def test_load_weights(tmp_path):
    a = segmentation_network("unet", channels=(4, 8))
    b = segmentation_network("unet", channels=(4, 8))
    torch.save(a.state_dict(), tmp_path / "plain.pt")
    torch.save({"model": a.state_dict(), "epoch": 3}, tmp_path / "wrapped.pt")
    for f in ("plain.pt", "wrapped.pt"):
        load_weights(b, tmp_path / f)
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_weights(b, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="plain.pt.*wrong --network"):
        load_weights(segmentation_network("relaynet", channels=[4]), tmp_path / "plain.pt")
