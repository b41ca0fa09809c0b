"""What a user looks at: overlay colours and legend, progress bars only on a terminal, the loss on the console at
an interval, and TensorBoard scalars (loss, learning rate, validation metrics) and images (sample grids, overlays)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from monai_oct.core.labels import DUKE_DME
from monai_oct.core.visualise import PALETTE, label_legend, label_overlay, overlay_panel
from monai_oct.handlers.stats import every_n_iterations, loss_and_lr, show_progress

ROOT = Path(__file__).resolve().parents[1]
FLUID = DUKE_DME.pathological[0]

# ---- colours ------------------------------------------------------------------------------------------------------

#: Machado et al. (2009) simulation matrices, severity 1, on linear RGB.
CVD = {
    "deuteranopia": [[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413], [-0.011820, 0.042940, 0.968881]],
    "protanopia": [[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216], [-0.003882, -0.048116, 1.051998]],
    "tritanopia": [[1.255528, -0.076749, -0.178779], [-0.078411, 0.930809, 0.147602], [0.004733, 0.691367, 0.303900]],
}


def _linear(rgb):
    c = np.asarray(rgb, float) / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _lab(lin):
    """CIE L*a*b* (D65) of linear RGB."""
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = lin @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def _distances(palette, vision=None):
    """Pairwise CIE76 colour differences of the drawn classes (1..C-1), as seen with normal vision or ``vision``."""
    lin = _linear(palette[1:])
    if vision is not None:
        lin = np.clip(lin @ np.asarray(CVD[vision]).T, 0, 1)
    lab = _lab(lin)
    d = np.linalg.norm(lab[:, None] - lab[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    return d


@pytest.mark.parametrize("vision, min_pair, min_fluid", [(None, 20, 80), ("deuteranopia", 15, 40),
                                                         ("protanopia", 15, 40), ("tritanopia", 15, 40)])
def test_palette_classes_distinct_and_fluid_far_from_every_layer(vision, min_pair, min_fluid):
    # the old palette: fluid cyan 61 from ONL-ISM's blue, two layers 8.9 apart for deuteranopes
    assert PALETTE.shape == (DUKE_DME.num_classes, 3)
    d = _distances(PALETTE, vision)
    assert d.min() >= min_pair, f"{vision or 'normal'}: closest classes {np.unravel_index(d.argmin(), d.shape)} {d.min():.1f}"
    fluid = d[FLUID - 1]
    assert fluid.min() >= min_fluid, f"{vision or 'normal'}: fluid's nearest class {fluid.argmin() + 1} at {fluid.min():.1f}"


def test_legend_names_every_drawn_class_in_its_colour():
    legend = label_legend(DUKE_DME.names, width=200)
    assert legend.dtype == np.uint8 and legend.ndim == 3 and legend.shape[1] == 200
    assert legend.shape[0] > 14  # nine names do not fit one 200-pixel row: they wrap
    pixels = {tuple(p) for p in legend.reshape(-1, 3)}
    for i in range(1, DUKE_DME.num_classes):
        assert tuple(PALETTE[i]) in pixels, f"no swatch of class {i} ({DUKE_DME.names[i]})"
    assert tuple(PALETTE[0]) in pixels  # the text (black) is there
    with pytest.raises(ValueError, match=r"\[12\]"):
        label_legend(DUKE_DME.names, ids=[1, 12])


def test_line_plot_draws_each_series_in_its_colour_where_its_values_lie():
    """Tutorial 6's spectra chart: a rising and a falling series, each in its palette colour at the plot's bottom-left
    or top-left where its values say, a dashed marker, and a series of the wrong length refused."""
    from monai_oct.core.visualise import line_plot

    x = np.linspace(450, 900, 10)
    pic = line_plot(x, {"rising": np.linspace(0, 1, 10), "falling": np.linspace(1, 0, 10)}, markers=[570.0],
                    size=(300, 200))
    assert pic.shape == (200, 300, 3) and pic.dtype == np.uint8
    rising, falling = (np.all(pic == PALETTE[i], axis=-1) for i in (1, 2))
    left = slice(56, 100)  # the plot's left part: the rising line low (large rows), the falling one high
    assert rising[:, left].any() and falling[:, left].any()
    assert np.nonzero(rising[:, left])[0].mean() > np.nonzero(falling[:, left])[0].mean() + 50
    marker_col = 56 + round((570 - 450) / 450 * (300 - 68))
    assert (pic[20:150, marker_col - 1:marker_col + 2] == 150).all(-1).sum() > 20  # the dashed grey marker
    with pytest.raises(ValueError, match="'short' has 3 values for 10"):
        line_plot(x, {"short": [1, 2, 3]})


def test_overlay_panel_is_image_truth_prediction_and_legend():
    img = np.full((40, 50), 100, np.uint8)
    truth = np.zeros((40, 50), np.int64)
    truth[10:20] = 5
    truth[20:25, 10:20] = FLUID
    pred = np.zeros_like(truth)
    panel = overlay_panel(img, [truth, pred])
    assert panel.shape[1] == 3 * 50 + 2 * 4 and panel.shape[0] > 40 + 4  # three tiles side by side, legend below
    assert np.array_equal(panel[:40, :50], np.repeat(img[..., None], 3, -1))
    assert np.array_equal(panel[:40, 54:104], label_overlay(img, truth))
    assert np.array_equal(panel[:40, 108:158], np.repeat(img[..., None], 3, -1))  # prediction: all vitreous, uncoloured
    with pytest.raises(ValueError, match="differ"):
        overlay_panel(img, [truth[:-1]])


def test_sample_grid_draws_labels_in_colour_with_the_legend_in_png_and_tensorboard(tmp_path):
    from types import SimpleNamespace

    import torch

    from monai_oct.core.io import read_image
    from monai_oct.core.visualise import pair_grid
    from monai_oct.handlers.samples import SampleGrid

    labels = torch.zeros(2, 1, 8, 12, dtype=torch.int64)
    labels[:, :, 2:4] = 5
    labels[1, :, 5:7, 3:6] = FLUID
    grid = pair_grid(torch.zeros(2, 1, 8, 12), labels, colour=True)
    assert grid.shape == (8 + 2 + 8, 2 * 12 + 2, 3)
    assert np.array_equal(grid[2, 0], PALETTE[5]) and np.array_equal(grid[5, 12 + 2 + 3], PALETTE[FLUID])
    assert np.array_equal(grid[10:, :12], np.full((8, 12, 3), 128, np.uint8))  # the image (0 -> grey 128) below
    assert pair_grid(torch.zeros(2, 1, 8, 12), None, colour=True).ndim == 2  # no labels: grey as before

    def sampler(network, generators, shape, cond, device):
        return torch.zeros(len(generators), *shape)

    handler = SampleGrid(torch.nn.Linear(1, 1), sampler, (1, 8, 12), tmp_path, condition=torch.zeros(2, 10, 8, 12),
                         labels=labels, class_names=DUKE_DME.names, log_dir=tmp_path / "tb")
    png = read_image(handler.write(SimpleNamespace(state=SimpleNamespace(epoch=3))))
    assert png.ndim == 3 and png.shape[0] > grid.shape[0] + 4  # the legend below the grid
    bottom = {tuple(p) for p in png[grid.shape[0] + 4:].reshape(-1, 3)}
    assert all(tuple(PALETTE[i]) in bottom for i in range(1, DUKE_DME.num_classes))
    images = _tensorboard(tmp_path / "tb").Images("samples")
    assert [(e.step, e.height, e.width) for e in images] == [(3, png.shape[0], png.shape[1])]


def test_quality_figure_has_the_legend_when_synthetic_labels_are_drawn(tmp_path):
    import torch

    from monai_oct.core.io import read_image
    from monai_oct.recipes.image_sets import ImageSet
    from monai_oct.recipes.quality import quality_figure

    images = torch.zeros(2, 1, 32, 48)
    labels = torch.zeros(2, 1, 32, 48, dtype=torch.int64)
    labels[:, :, 10:20] = 3
    for with_labels in (False, True):
        path = quality_figure(ImageSet(images), ImageSet(images, labels if with_labels else None), {},
                              tmp_path / f"fig_{with_labels}.png")
        bottom = {tuple(p) for p in read_image(path)[-40:].reshape(-1, 3)}
        swatches = [i for i in range(1, DUKE_DME.num_classes) if tuple(PALETTE[i]) in bottom]
        assert swatches == (list(range(1, DUKE_DME.num_classes)) if with_labels else [])


# ---- console pieces -----------------------------------------------------------------------------------------------

class _Stream(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def test_show_progress_auto_follows_the_terminal_and_forcing_wins():
    assert show_progress("auto", _Stream(True)) is True
    assert show_progress("auto", _Stream(False)) is False
    assert show_progress(None, _Stream(False)) is False
    closed = io.StringIO()
    closed.close()
    assert show_progress("auto", closed) is False  # isatty of a closed stream raises: not a terminal
    for forced, expected in [("true", True), ("True", True), (True, True), (1, True), ("false", False), ("False", False),
                             (False, False), ("0", False), ("off", False)]:
        assert show_progress(forced, _Stream(not expected)) is expected, forced
    with pytest.raises(ValueError, match="'sometimes'"):
        show_progress("sometimes")


def test_every_n_iterations_and_loss_and_lr():
    f = every_n_iterations(3)
    assert [i for i in range(1, 11) if f(None, i)] == [3, 6, 9]
    assert every_n_iterations(0) is False and every_n_iterations(None) is False
    for bad in (-1, "x", 2.5):
        with pytest.raises(ValueError, match="log_interval"):
            every_n_iterations(bad)
    import torch

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2e-5)
    assert loss_and_lr(opt)({"loss": torch.tensor(0.5)}) == {"train_loss": 0.5, "lr": 2e-5}
    assert loss_and_lr()({"loss": 0.25}) == {"train_loss": 0.25}


# ---- the bundles: console, progress bars and TensorBoard after tiny runs ----------------------------------------

def _tensorboard(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0})
    ea.Reload()
    return ea


def _run(cmd, timeout=300):
    """Run with stdout and stderr piped (not a terminal), as a job writing a log file would; returns both, as written."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=timeout)
    out = (res.stdout + res.stderr).decode(errors="replace")  # bytes: text mode would turn each \r into \n
    if res.returncode != 0:
        pytest.fail(f"{cmd} failed ({res.returncode}):\n{out[-4000:]}")
    return out


def _loss_lines(log):
    return [line for line in log.splitlines() if "train_loss:" in line and "lr:" in line]


@pytest.mark.slow
def test_seg_training_console_progress_and_tensorboard(phantom_dir, tmp_path):
    cfg = str(ROOT / "bundles" / "oct_layer_seg" / "configs" / "train.yaml")
    base = [sys.executable, "-m", "monai.bundle", "run", "--config_file", cfg, "--dataset_dir", str(phantom_dir),
            "--image_size", "[64,64]", "--band_height", "0", "--channels", "[8,16,32]", "--batch_size", "2"]
    # 9 training images, batch 2: 5 iterations per epoch, 10 in all; a line every 3rd iteration: 3, 6, 9
    log = _run(base + ["--output_dir", str(tmp_path / "run"), "--max_epochs", "2", "--log_interval", "3"])
    assert "\r" not in log  # progress: auto and no terminal: no bars
    lines = _loss_lines(log)
    assert [line.split("Iter: ")[1].split(" ")[0] for line in lines] == ["3/5", "1/5", "4/5"], lines
    assert "lr: 0.001" in lines[0]
    assert "Epoch[1] Metrics -- train_loss_epoch:" in log and "Epoch[2] Metrics -- train_loss_epoch:" in log
    assert "Epoch[2] Metrics -- val_mean_dice:" in log

    ea = _tensorboard(tmp_path / "run" / "tensorboard")
    tags = ea.Tags()
    assert {"train_loss", "lr", "train_loss_epoch", "val_mean_dice", "val_mean_pa"} <= set(tags["scalars"])
    assert [e.step for e in ea.Scalars("lr")] == list(range(1, 11))
    assert [e.step for e in ea.Scalars("val_mean_dice")] == [1, 2]
    overlays = sorted(t for t in tags["images"] if t.startswith("val_overlays/"))
    assert overlays == ["val_overlays/0", "val_overlays/1", "val_overlays/2"]  # the 3 validation images (of 4 asked)
    assert [e.step for e in ea.Images("val_overlays/0")] == [1, 2]
    img = ea.Images("val_overlays/0")[0]
    assert img.width == 3 * 64 + 2 * 4 and img.height > 64  # image | truth | prediction, legend below

    # --progress true forces the bars even into a log; --log_interval 0 leaves only the epoch summaries
    log = _run(base + ["--output_dir", str(tmp_path / "forced"), "--max_epochs", "1", "--progress", "true",
                       "--log_interval", "0", "--val_overlays", "0"])
    assert "\r" in log and not _loss_lines(log) and "Epoch[1] Metrics -- train_loss_epoch:" in log
    assert not [t for t in _tensorboard(tmp_path / "forced" / "tensorboard").Tags()["images"]]


@pytest.mark.slow
def test_ddpm_training_and_synthesis_console_and_tensorboard(phantom_dir, tmp_path):
    from monai_oct.bundle import bundle_command, stage_configs

    bundle = ROOT / "bundles" / "oct_ddpm"
    tiny = dict(image_size=[16, 32], band_height=48, channels=[8, 16], num_res_blocks=1, num_train_timesteps=50,
                learning_rate=1e-3, batch_size=4, device="cpu", sample_steps=2, num_sample_images=2, num_threads=1,
                dataset_dir=phantom_dir)
    pre = tmp_path / "pre"
    # 9 images, batch 4: 3 iterations per epoch
    log = _run(bundle_command(bundle, stage_configs("pretrain"), output_dir=pre, max_epochs=2, sample_interval=1,
                              log_interval=2, **tiny))
    assert "\r" not in log
    assert [line.split("Iter: ")[1].split(" ")[0] for line in _loss_lines(log)] == ["2/3", "1/3", "3/3"]
    assert "Epoch[2] Metrics -- train_loss_epoch:" in log
    ea = _tensorboard(pre / "tensorboard")
    assert {"train_loss", "lr", "train_loss_epoch"} <= set(ea.Tags()["scalars"])
    assert [e.step for e in ea.Images("samples")] == [1, 2]  # the sample grid of each epoch

    # the synthesis engine's bar follows the same rule (labels from the datalist: no mask model needed)
    log = _run(bundle_command(bundle, stage_configs("synthesize"), output_dir=tmp_path / "syn", label_datalist="datalist.json",
                              image_ckpt=pre / "model.pt", num_samples=6, sampler="ddim", num_inference_steps=2, log_interval=1,
                              **dict(tiny, batch_size=3)))
    assert "\r" not in log and "synthetic dataset: 6 pairs" in log
    assert "Iter: 1/2 -- last_sample: 2" in log and "Iter: 2/2 -- last_sample: 5" in log  # a line per batch


def test_overlays_of_a_mismatched_prediction_are_skipped_with_a_warning_naming_the_file(tmp_path, caplog):
    from types import SimpleNamespace

    import torch

    from monai_oct.core.io import write_png
    from monai_oct.handlers.segmentation import SegmentationOverlays

    path = tmp_path / "scan.png"
    write_png(path, np.full((20, 30), 90, np.uint8))
    good = {"image_path": str(path), "label": torch.zeros(1, 20, 30), "pred": torch.zeros(1, 20, 30)}
    bad = dict(good, pred=torch.zeros(1, 30, 20))  # e.g. a transposed prediction
    writer = SimpleNamespace(images=[], add_image=lambda tag, img, global_step, dataformats: writer.images.append(
        (tag, img.shape, global_step)), flush=lambda: None)
    h = SegmentationOverlays(summary_writer=writer, num_images=2)
    engine = SimpleNamespace(state=SimpleNamespace(output=[bad, good], batch=[{}, {}], epoch=7))
    h.reset()
    with caplog.at_level("WARNING"):
        h.iteration_completed(engine)
    h.completed(engine)
    assert "scan.png" in caplog.text and "(30, 20)" in caplog.text
    assert [(t, s[1], e) for t, s, e in writer.images] == [("val_overlays/0", 3 * 30 + 2 * 4, 7)]
    with pytest.raises(ValueError, match="log_dir"):
        SegmentationOverlays()
