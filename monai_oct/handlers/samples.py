"""Pictures of what a diffusion model generates: (label, image) grids as PNG and in TensorBoard (labels in colour,
with the legend of the class names)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

import torch
from ignite.engine import Engine, Events
from torch import nn

from monai_oct.core.io import write_png
from monai_oct.core.seeding import sample_generators, sample_seeds
from monai_oct.core.visualise import label_legend, pair_grid
from monai_oct.engines.sampler import DiffusionSampler

__all__ = ["SampleGrid"]


class SampleGrid:
    """Every ``interval`` epochs (and at the end), sample a few images and write a (label, image) grid.

    Writes ``output_dir/samples/epoch_XXXX.png`` and, with ``log_dir``, a TensorBoard image ``samples``. With
    ``labels``, each label map is drawn in :data:`~monai_oct.core.visualise.PALETTE`'s colours above its image, and
    the legend of ``class_names`` goes below the grid; without, the grid is grey.
    The same seeds are used every time, so successive grids show the same samples maturing.

    Args:
        network: the module to sample with (usually ``ema.ema_model``).
        sampler: a :class:`~monai_oct.engines.sampler.DiffusionSampler` (a few DDIM steps are enough).
        image_shape: ``(C, H, W)`` of a generated image.
        output_dir: where ``samples/`` goes.
        condition: ``(N, Cc, H, W)`` encoded conditions (one sample each) or None (unconditional, ``num_samples``).
        labels: ``(N, 1, H, W)`` label ids drawn above the images (None: images only).
        num_samples: samples when ``condition`` is None.
        num_classes: C, for the label grey levels.
        interval: epochs between grids (0: only at the end).
        seed: sample ``i`` uses the stream of ``(seed, i)`` (:func:`~monai_oct.core.seeding.sample_seeds`), so grids
            of runs with different seeds share no sample.
        log_dir: TensorBoard folder (None: PNG only).
        class_names: names of the classes for the legend (default: ``class <id>``).
        decode: turns the samples into ``(N, 1, H, W)`` label ids drawn above them (e.g. the mask DDPM's
            :class:`~monai_oct.transforms.encoding.MaskDecode`, whose C-channel one-hot samples no grey image shows);
            replaces ``labels``. None: ``labels`` as given.
    """

    def __init__(self, network: nn.Module, sampler: DiffusionSampler, image_shape: Sequence[int],
                 output_dir: str | os.PathLike, condition: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                 num_samples: int = 4, num_classes: int = 10, interval: int = 1, seed: int = 0,
                 log_dir: str | os.PathLike | None = None, class_names: Sequence[str] | None = None,
                 decode: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.network, self.sampler, self.image_shape = network, sampler, tuple(int(s) for s in image_shape)
        self.output_dir = Path(output_dir)
        self.condition, self.labels, self.decode = condition, labels, decode
        self.num_samples = int(condition.shape[0]) if condition is not None else int(num_samples)
        self.num_classes, self.interval, self.seed = int(num_classes), int(interval), int(seed)
        self.log_dir = log_dir
        self.class_names = list(class_names) if class_names is not None else [f"class {i}" for i in range(self.num_classes)]
        self._writer = None
        self._last_epoch = -1

    def attach(self, engine: Engine) -> None:
        """Write grids at ``EPOCH_COMPLETED(every=interval)`` and ``COMPLETED``."""
        if self.interval > 0:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self.write)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def __call__(self, engine: Engine) -> None:
        """Attach to ``engine``."""
        self.attach(engine)

    def write(self, engine: Engine) -> Path:
        """Sample and write the grid of the current epoch (once per epoch); returns the PNG path."""
        path = self.output_dir / "samples" / f"epoch_{engine.state.epoch:04d}.png"
        if engine.state.epoch == self._last_epoch:
            return path
        self._last_epoch = engine.state.epoch

        device = next(self.network.parameters()).device
        was_training = self.network.training
        self.network.eval()
        cond = self.condition.to(device) if self.condition is not None else None
        images = self.sampler(self.network, sample_generators(sample_seeds(self.seed, range(self.num_samples)), device),
                              self.image_shape, cond, device)
        self.network.train(was_training)
        labels = self.labels if self.decode is None else self.decode(images).cpu()
        grid = pair_grid(images, labels, self.num_classes, colour=True)
        if labels is not None:
            legend = label_legend(self.class_names, width=grid.shape[1])
            grid = np.concatenate([np.pad(grid, ((0, 4), (0, legend.shape[1] - grid.shape[1]), (0, 0)), constant_values=255),
                                   legend])
        write_png(path, grid)
        if self.log_dir is not None:
            if self._writer is None:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(log_dir=str(self.log_dir))
            self._writer.add_image("samples", grid if grid.ndim == 3 else grid[None], global_step=engine.state.epoch,
                                   dataformats="HWC" if grid.ndim == 3 else "CHW")
            self._writer.flush()
        return path
