"""The B-scan classifier of image-level classes (issue 18): its real-data split, its training, and its scores on a
real held-out set or on a synthetic set of requested classes.

Split of the real scans (:func:`real_class_split`, fixed and documented):

- DME: Duke DME's ``datalist_train.json`` trains, its ``datalist_val.json`` is held out (other subjects);
- healthy / MS: the HCMS Spectralis B-scans ``hc01_*`` / ``ms01_*_frame_NNN.png`` are one volume each, so they are
  split by B-scan index: frames ``< first_heldout_frame`` (default 40: frames 1-39) train, frames 40-49 are held
  out. A contiguous block, not every k-th frame: neighbouring B-scans of a volume look alike, and only the one
  boundary pair (39 / 40) is adjacent across the split.

One subject per HCMS class means the held-out accuracy measures "same eye, other B-scans" for healthy / MS, and a
different scanner setting from Duke's; a classifier can use any such difference, so its accuracy on synthetic scans
says the generator reproduces what tells the training sets apart, not the disease alone.

Training is MONAI's :class:`~monai.engines.SupervisedTrainer` (cross-entropy, Adam, horizontal flips and small
intensity changes), the images loaded once into memory at ``image_size``. ``classifier.pt`` (the state dict) and
``classifier.json`` (classes, network settings, image size, split, held-out scores) are written atomically, the
record last.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedTrainer
from monai.transforms import Compose, RandFlipd, RandScaleIntensityd, RandShiftIntensityd
from monai.utils import set_determinism
from torch import nn

from monai_oct.core.classes import CLASS_KEY, ClassTable, get_class_table
from monai_oct.core.io import DataError, write_json, write_text
from monai_oct.metrics.classification import confusion_markdown, confusion_report
from monai_oct.networks.checkpoint import save_checkpoint
from monai_oct.networks.classifier import CLASSIFIER_DEFAULTS, bscan_classifier, classifier_record_path, load_classifier
from monai_oct.recipes.diffusion_pipelines import pretrain_transforms
from monai_oct.recipes.image_sets import load_image_set
from monai_oct.recipes.items import resolve_items

logger = logging.getLogger(__name__)

__all__ = ["real_class_split", "train_classifier", "classify", "evaluate_classifier", "CLASSIFIER_FILE"]

CLASSIFIER_FILE = "classifier.pt"
_FRAME = re.compile(r"_frame_(\d+)\.\w+$")


def real_class_split(data: str | os.PathLike, first_heldout_frame: int = 40) -> dict[str, list[dict[str, Any]]]:
    """Train and held-out items of the real scans of :data:`~monai_oct.core.classes.OCT_PATHOLOGY` (module doc).

    Args:
        data: the folder holding ``duke_dme/`` and ``hcms_unlabeled/`` (``../shared/data``).
        first_heldout_frame: HCMS B-scans with this frame index or higher are held out.

    Returns:
        ``{"train": items, "heldout": items}``, each item ``{"image", "class"}`` (and Duke's ``label``).

    Raises:
        DataError: naming a missing datalist or folder, or an HCMS file without a ``_frame_NNN`` index.
    """
    data = Path(data)
    split: dict[str, list[dict[str, Any]]] = {"train": [], "heldout": []}
    for part, name in (("train", "datalist_train.json"), ("heldout", "datalist_val.json")):
        duke = resolve_items(data / "duke_dme" / name, fields=["image", "label"])
        split[part] += [{**it, CLASS_KEY: "DME"} for it in duke]
    hcms = data / "hcms_unlabeled"
    if not hcms.is_dir():
        raise DataError(f"{hcms}: HCMS folder not found (healthy hc01_* and MS ms01_* B-scans)")
    for cls, pattern in (("healthy", "hc01_*.png"), ("MS", "ms01_*.png")):
        files = sorted(hcms.glob(pattern))
        if not files:
            raise DataError(f"{hcms}: no {pattern} B-scans")
        for f in files:
            m = _FRAME.search(f.name)
            if m is None:
                raise DataError(f"{f}: no B-scan index (_frame_NNN) in the file name to split by")
            split["heldout" if int(m.group(1)) >= first_heldout_frame else "train"].append({"image": str(f), CLASS_KEY: cls})
    return split


def _load(items: Sequence[dict[str, Any]], table: ClassTable, image_size: Sequence[int],
          band_height: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 1, H, W)`` in [-1, 1] and class ids ``(N,)`` of items (every class looked up first); with
    ``band_height`` the retina band of each scan (located from the image, as stage 1 reads unlabelled scans)."""
    ids = torch.tensor([table.class_of(it) for it in items], dtype=torch.long)
    if band_height:
        chain = pretrain_transforms(image_size, band_height, table=None)
        images = torch.stack([torch.as_tensor(chain({"image": it["image"]})["image"]).float() for it in items])
    else:
        images = load_image_set([{"image": it["image"]} for it in items], image_size=image_size, with_labels=False).images
    return images, ids


@torch.no_grad()
def classify(network: nn.Module, images: torch.Tensor, batch_size: int = 16,
             image_size: Sequence[int] | None = None) -> torch.Tensor:
    """Logits ``(N, K)`` of ``images`` ``(N, 1, H, W)`` in [-1, 1], resized (bilinear) to ``image_size`` if given."""
    network.eval()
    device = next(network.parameters()).device
    out = []
    for s in range(0, images.shape[0], batch_size):
        x = images[s:s + batch_size].float().to(device)
        if image_size is not None and tuple(x.shape[-2:]) != tuple(image_size):
            x = nn.functional.interpolate(x, size=tuple(int(v) for v in image_size), mode="bilinear",
                                          align_corners=False, antialias=True)
        out.append(network(x).float().cpu())
    return torch.cat(out) if out else torch.zeros((0, 0))


def train_classifier(train: Sequence[dict[str, Any]], heldout: Sequence[dict[str, Any]] | None, output_dir: str | os.PathLike,
                     table: ClassTable | str = "oct_pathology", image_size: Sequence[int] = (128, 256),
                     max_epochs: int = 30, batch_size: int = 16, lr: float = 1e-3, seed: int = 0,
                     device: str | torch.device = "cpu", network: dict[str, Any] | None = None,
                     split_note: str = "", band_height: int | None = None) -> dict[str, Any]:
    """Train the B-scan classifier with MONAI's ``SupervisedTrainer`` and write ``classifier.pt`` + ``classifier.json``.

    Args:
        train: training items (``image`` + a ``class`` field or a file name the table's rules match).
        heldout: held-out items scored after training (None or empty: none).
        output_dir: where ``classifier.pt``, ``classifier.json`` and ``classifier_heldout.md`` go.
        table: the class table (name or table).
        image_size: ``(H, W)`` every image is resized to.
        max_epochs, batch_size, lr: training settings (Adam).
        seed: ``set_determinism`` seed and the loader's shuffling.
        device: where to train.
        network: DenseNet settings over :data:`~monai_oct.networks.classifier.CLASSIFIER_DEFAULTS`.
        split_note: how the split was made, for the record.
        band_height: rows of the retina band cropped (located from the image) before resizing, as the diffusion
            stages crop (None: the whole B-scan). Synthetic bands are scored as they are (:func:`evaluate_classifier`).

    Returns:
        the record written to ``classifier.json`` (with ``train`` and ``heldout`` confusion reports).

    Raises:
        DataError: naming an item without a known class or an unreadable file; ValueError: fewer than 2 classes
            in ``train``.
    """
    table = get_class_table(table)
    size = [int(v) for v in image_size]
    set_determinism(seed)
    start = time.time()
    x, y = _load(train, table, size, band_height)
    if len(set(y.tolist())) < 2:
        raise ValueError(f"the training items hold {len(set(y.tolist()))} class(es) {sorted(set(y.tolist()))}; "
                         "a classifier needs at least 2")
    held = _load(heldout, table, size, band_height) if heldout else None
    aug = Compose([RandFlipd("image", prob=0.5, spatial_axis=1), RandScaleIntensityd("image", factors=0.1, prob=0.5),
                   RandShiftIntensityd("image", offsets=0.1, prob=0.5)])
    data = Dataset([{"image": x[i], "label": y[i]} for i in range(len(y))], transform=aug)
    loader = DataLoader(data, batch_size=int(batch_size), shuffle=True, num_workers=0,
                        generator=torch.Generator().manual_seed(int(seed)))
    settings = {**CLASSIFIER_DEFAULTS, **(network or {})}
    net = bscan_classifier(len(table), **settings).to(device)
    trainer = SupervisedTrainer(device=torch.device(device), max_epochs=int(max_epochs), train_data_loader=loader,
                                network=net, optimizer=torch.optim.Adam(net.parameters(), lr=float(lr)),
                                loss_function=nn.CrossEntropyLoss(), amp=False)
    losses: list[float] = []

    @trainer.on(Events.EPOCH_COMPLETED)
    def _log(engine: Any) -> None:
        losses.append(float(engine.state.output[0]["loss"]) if isinstance(engine.state.output, list)
                      else float(engine.state.output["loss"]))
        logger.info("classifier epoch %d/%d loss %.4f", engine.state.epoch, max_epochs, losses[-1])

    trainer.run()
    out = Path(output_dir)
    ckpt = save_checkpoint({k: v.cpu() for k, v in net.state_dict().items()}, out / CLASSIFIER_FILE)
    scores = {"train": confusion_report(classify(net, x), y, table.names)}
    if held is not None:
        scores["heldout"] = confusion_report(classify(net, held[0]), held[1], table.names)
    record = {"table": table.name, "classes": table.names, "network_class": "monai.networks.nets.DenseNet",
              "network": settings,
              "image_size": size, "band_height": band_height or None, "max_epochs": int(max_epochs),
              "batch_size": int(batch_size), "lr": float(lr),
              "seed": int(seed), "split": split_note, "num_train": len(train), "num_heldout": len(heldout or []),
              "train_items": [str(it["image"]) for it in train], "heldout_items": [str(it["image"]) for it in heldout or []],
              "epoch_loss": losses, "wall_s": round(time.time() - start, 1), **scores}
    if held is not None:
        write_text(out / "classifier_heldout.md", confusion_markdown(scores["heldout"], "Classifier on held-out real scans"))
    write_json(classifier_record_path(ckpt), record)
    return record


def evaluate_classifier(checkpoint: str | os.PathLike, source: Any, output_dir: str | os.PathLike | None = None,
                        key: str | Sequence[str] | None = None, classes: Sequence[str | int] | None = None,
                        name: str = "classification", device: str | torch.device = "cpu",
                        band_height: int | None = None) -> dict[str, Any]:
    """Score a set (a synthetic datalist whose items carry ``class``: the class each was drawn as) per class.

    Args:
        checkpoint: ``classifier.pt`` of :func:`train_classifier`.
        source: a datalist, folder or item list (:func:`~monai_oct.recipes.items.resolve_items`).
        output_dir: where ``<name>.json`` and ``<name>.md`` go (None: nothing written).
        key: the datalist list(s) to read.
        classes: the requested classes (names or ids) to score; items of other classes are left out (None: all).
        name: file stem of the report.
        device: where the classifier runs.
        band_height: crop the retina band first (real whole scans; the record's ``band_height``); None: score the
            images as they are (a synthesis writes bands already).

    Returns:
        the :func:`~monai_oct.metrics.classification.confusion_report` plus ``checkpoint`` and ``source``.

    Raises:
        FileNotFoundError: naming a missing checkpoint or record; ValueError: naming an unknown requested class;
        DataError: naming an item without a class.
    """
    net, record = load_classifier(checkpoint, device)
    table = get_class_table(record["table"])
    if list(record["classes"]) != table.names:
        raise ValueError(f"{checkpoint}: trained on the classes {record['classes']}, the table {table.name!r} has "
                         f"{table.names}")
    wanted = None if classes is None else [table.id_of(c, "requested class") for c in classes]
    items = resolve_items(source, key, fields=["image", CLASS_KEY])
    items = [it for it in items if wanted is None or table.class_of(it) in wanted]
    if not items:
        raise DataError(f"{source}: no items of the requested classes {list(classes or [])}")
    images, ids = _load(items, table, record["image_size"], band_height)
    rep = confusion_report(classify(net, images), ids, table.names, requested=wanted)
    rep.update({"checkpoint": str(checkpoint), "source": str(source)})
    if output_dir is not None:
        write_json(Path(output_dir) / f"{name}.json", rep)
        write_text(Path(output_dir) / f"{name}.md", confusion_markdown(rep, f"Classifier on {source}"))
    return rep
