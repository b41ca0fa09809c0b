"""``make demo``: the whole RetiDiff pipeline at toy scale on the built-in phantom, on CPU.

1. a phantom dataset (annotated) and a second, unannotated set of phantom images;
2. the four ``bundles/oct_ddpm`` stages through the bundle configs (``monai.bundle.run`` in-process), sized by
   the bundle's ``cpu_demo`` preset (``--quick``: ``cpu_tiny``): pretrain on the unannotated images, the mask
   DDPM, fine-tuning with DRM, synthesis;
3. the synthetic dataset (images/, labels/, datalist.json, manifest.json) and its grid.png.
"""

from __future__ import annotations

import time
from pathlib import Path

from monai_oct.bundle import bundle_dir, run_bundle, stage_configs
from monai_oct.core.datalist import check_dataset, load_datalist
from monai_oct.core.labels import DUKE_DME
from monai_oct.phantoms.oct import write_phantom_dataset
from monai_oct.recipes.presets import load_preset

__all__ = ["run_demo", "DEMO_SETTINGS"]


#: the demo's two sizes: the phantom it writes and the bundle preset (``bundles/oct_ddpm/configs/presets/<preset>.yaml``)
#: that sizes every stage.
DEMO_SETTINGS = {
    "full": {"preset": "cpu_demo", "num_images": 48, "num_unlabelled": 48, "phantom_size": (256, 256)},
    "quick": {"preset": "cpu_tiny", "num_images": 8, "num_unlabelled": 4, "phantom_size": (64, 64)},
}


def run_demo(out: Path, quick: bool = False) -> int:
    """Run the demo under ``out``; returns an exit code (0: the synthetic dataset was written and checks out).

    Args:
        out: output folder.
        quick: the seconds-long ``cpu_tiny`` preset instead of ``cpu_demo``.
    """
    BUNDLE = bundle_dir("oct_ddpm")

    out = Path(out)
    cfg = DEMO_SETTINGS["quick" if quick else "full"]
    t0 = time.time()
    data = out / "phantom"
    dl = write_phantom_dataset(data, num=cfg["num_images"], size=cfg["phantom_size"], seed=0)
    report = check_dataset(load_datalist(dl))
    print(report.summary(DUKE_DME))
    if not report.ok:
        return 1
    unlabelled = out / "unlabelled"
    write_phantom_dataset(unlabelled, num=cfg["num_unlabelled"], size=cfg["phantom_size"], seed=1)
    print(f"\nphantom dataset: {data}\ndatalist: {dl}\nunannotated images: {unlabelled / 'images'}")

    preset = f"presets/{cfg['preset']}.yaml"
    num_samples = load_preset(BUNDLE, cfg["preset"])["num_samples"]
    common = {"progress": False, "seed": 0}
    runs = out / "ddpm"
    stages = [
        ("pretrain", {"dataset_dir": str(unlabelled / "images")}),
        ("train_masks", {"dataset_dir": str(data)}),
        ("finetune", {"dataset_dir": str(data), "pretrained_ckpt": str(runs / "pretrain" / "model.pt")}),
    ]
    for stage, extra in stages:
        t = time.time()
        print(f"\n== stage {stage} ==", flush=True)
        run_bundle(BUNDLE, stage_configs(stage) + [preset], output_dir=str(runs / stage), **common, **extra)
        print(f"stage {stage}: {time.time() - t:.1f} s, weights {runs / stage / 'model.pt'}", flush=True)
    synth = out / "synthetic"
    t = time.time()
    print("\n== synthesis ==", flush=True)
    run_bundle(BUNDLE, stage_configs("synthesize") + [preset], output_dir=str(synth), dataset_dir=str(data),
               mask_ckpt=str(runs / "train_masks" / "model.pt"), image_ckpt=str(runs / "finetune" / "model.pt"), **common)
    print(f"synthesis: {time.time() - t:.1f} s", flush=True)
    rep = check_dataset(load_datalist(synth / "datalist.json", key="training"))
    print(rep.summary(DUKE_DME))
    if not rep.ok or rep.num_labelled != num_samples:
        return 1
    print(f"\nsynthetic dataset: {synth} (datalist {synth / 'datalist.json'})\ngrid of (label, image) pairs: "
          f"{synth / 'grid.png'}\ntraining runs: {runs}\ntotal {time.time() - t0:.0f} s")
    return 0
