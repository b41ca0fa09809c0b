"""Y-Net, GD-Net and their Fast Fourier Convolution: shapes at odd and even sizes, the size error, a few-step
overfit on the phantom, TorchScript export, the factory, the documented parameter counts and one bundle run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from monai_oct.losses import MaskedDiceCELoss
from monai_oct.networks.ffc import FFC, FFCBlock, FourierUnit
from monai_oct.networks.gdnet import GDNet, MultiScaleGraphReasoning
from monai_oct.networks.segmentation import SEGMENTATION_NETWORKS, check_segmentation_size, segmentation_network
from monai_oct.networks.ynet import YNet
from monai_oct.phantoms.oct import generate_bscans

ROOT = Path(__file__).resolve().parents[1]
NETS = {"ynet": YNet, "gdnet": GDNet}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("size", [(16, 32), (17, 23)])
def test_fourier_unit_and_ffc_keep_odd_and_even_sizes_and_script(size):
    x = torch.randn(2, 8, *size)
    assert FourierUnit(8, 6)(x).shape == (2, 6, *size)
    block = FFCBlock(8, 12).eval()
    assert block.ffc.in_local == 4 and block.ffc.g2g.fourier.out_channels == 3  # global ratio 0.5: 6 of 12 global
    with torch.no_grad():
        eager = block(x)
        assert eager.shape == (2, 12, *size)
        assert torch.allclose(torch.jit.script(block)(x), eager, atol=1e-6)


def test_ffc_global_branch_sees_the_whole_image():
    """A pixel changed in one corner changes the global half of the output in the far corner (a 3x3 conv cannot)."""
    torch.manual_seed(0)
    ffc = FFC(16, 16).eval()
    x = torch.randn(1, 16, 33, 40)
    y = x.clone()
    y[..., 0, 0] += 5.0
    with torch.no_grad():
        d = (ffc(y) - ffc(x)).abs()[0, :, -1, -1]
    assert d[8:].max() > 1e-4 and d[:8].max() == 0  # global channels changed, local ones did not (3x3 from far away)


def test_ffc_rejects_a_ratio_that_leaves_a_part_empty():
    with pytest.raises(ValueError, match="1 channels and global ratio 0.5"):
        FFC(1, 8)
    with pytest.raises(ValueError, match="global ratio 1.0"):
        FFC(8, 8, ratio=1.0)


@pytest.mark.parametrize("name", ["ynet", "gdnet"])
@pytest.mark.parametrize("size", [(32, 64), (37, 53)])
def test_shapes_at_odd_and_even_sizes(name, size):
    net = NETS[name](in_channels=1, out_channels=10, channels=4, depth=3).eval()
    check_segmentation_size(net, size)
    with torch.no_grad():
        assert net(torch.randn(2, 1, *size)).shape == (2, 10, *size)


@pytest.mark.parametrize("name", ["ynet", "gdnet"])
def test_too_small_an_image_names_the_size(name):
    net = segmentation_network(name, channels=[4], out_channels=3)  # depth 4: sides >= 16
    assert check_segmentation_size(net, [16, 130]) is None
    with pytest.raises(ValueError) as e:
        check_segmentation_size(net, [15, 64])
    assert "[15, 64]" in str(e.value) and ">= 16" in str(e.value) and "--image_size" in str(e.value)
    with pytest.raises(ValueError, match=r"\[15, 64\]"):  # the network itself checks before its first layer
        net(torch.zeros(1, 1, 15, 64))
    with pytest.raises(ValueError, match="B, C, H, W"):
        net(torch.zeros(1, 16, 16))


@pytest.mark.parametrize("name", ["ynet", "gdnet"])
def test_scripted_network_equals_eager(name):
    net = segmentation_network(name, channels=[4], out_channels=10, depth=3).eval()
    x = torch.randn(1, 1, 24, 41)
    scripted = torch.jit.script(net)
    with torch.no_grad():
        assert torch.allclose(scripted(x), net(x), atol=1e-5)


@pytest.mark.parametrize("name", ["ynet", "gdnet"])
def test_few_steps_overfit_the_phantom(name):
    torch.manual_seed(0)
    img, lab = generate_bscans(4, size=(32, 64), seed=1)
    x = torch.as_tensor(img, dtype=torch.float32)[:, None] / 255.0
    y = torch.as_tensor(lab, dtype=torch.long)[:, None]
    net = segmentation_network(name, channels=[8], out_channels=10, depth=3)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    loss_fn = MaskedDiceCELoss()
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses  # measured 3.27 -> 1.39 (Dice over 10 classes stays high)
    with torch.no_grad():
        acc = (net.eval()(x).argmax(1, keepdim=True) == y).float().mean()
    assert acc > 0.6, float(acc)


def test_factory_knows_both_and_gdnet_adds_graph_reasoning():
    assert {"ynet", "gdnet"} <= set(SEGMENTATION_NETWORKS)
    y, g = segmentation_network("Y-Net", channels=[4]), segmentation_network("gdnet", channels=[4], dropout=0.1)
    assert type(y) is YNet and type(g) is GDNet and isinstance(g.reason, MultiScaleGraphReasoning)
    assert isinstance(y.reason, torch.nn.Identity) and y.depth == 4 and y.classifier.in_channels == 4
    with pytest.raises(ValueError, match="scales"):
        GDNet(scales=())


def test_parameter_counts_are_the_documented_ones():
    """The bundle docs' network table states each network's parameters at the bundle defaults."""
    doc = (ROOT / "bundles" / "oct_layer_seg" / "docs" / "README.md").read_text()
    rows = dict(re.findall(r"^\s*\| `(\w+)` \|[^|]*\| ([\d,]+) \|", doc, flags=re.M))
    assert set(rows) == set(SEGMENTATION_NETWORKS)
    for name, count in rows.items():
        net = segmentation_network(name, in_channels=1, out_channels=10)
        assert sum(p.numel() for p in net.parameters()) == int(count.replace(",", "")), name


def test_runs_under_bf16_autocast():
    """The bundles' --amp: the FFT runs in float32 (torch has no bfloat16 FFT, and cuFFT's half needs powers of 2)."""
    net = GDNet(channels=4, depth=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(torch.randn(2, 1, 24, 37))
    assert y.dtype == torch.bfloat16 and y.shape == (2, 10, 24, 37)
    y.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters() if p.requires_grad)
