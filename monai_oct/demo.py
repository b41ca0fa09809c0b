"""``make demo``: the whole RetiDiff pipeline at toy scale on the built-in phantom, on CPU.

1. a phantom dataset (annotated) and a second, unannotated set of phantom images;
2. the four ``bundles/oct_ddpm`` stages through the bundle configs (``monai.bundle.run`` in-process):
   pretrain on the unannotated images, the mask DDPM, fine-tuning with DRM, synthesis;
3. the synthetic dataset (images/, labels/, datalist.json, manifest.json) and its grid.png.
"""

from __future__ import annotations

import time
from pathlib import Path

from monai_oct.bundle import bundle_dir, run_bundle, stage_configs
from monai_oct.core.datalist import check_dataset, load_datalist
from monai_oct.phantoms.oct import write_phantom_dataset

__all__ = ["run_demo", "DEMO_SETTINGS"]


#: the toy settings of the demo: (phantom, per-stage) for the full and the ``--quick`` run.
DEMO_SETTINGS = {
    "full": {
        "num_images": 48, "num_unlabelled": 48, "phantom_size": (256, 256), "epochs": {"pretrain": 30, "train_masks": 80, "finetune": 50},
        "num_samples": 16, "steps": 50,
        "common": {"image_size": [32, 64], "band_height": 160, "channels": [16, 32, 64], "num_res_blocks": 1,
                   "num_train_timesteps": 1000, "prediction_type": "v_prediction", "schedule": "cosine",
                   "learning_rate": 1e-3, "warmup_steps": 20, "ema_decay": 0.995, "batch_size": 8, "flip": 0.5,
                   "sample_interval": 0, "sample_steps": 20, "device": "cpu", "num_threads": 1},
    },
    "quick": {
        "num_images": 8, "num_unlabelled": 4, "phantom_size": (64, 64), "epochs": {"pretrain": 1, "train_masks": 1, "finetune": 1},
        "num_samples": 4, "steps": 3,
        "common": {"image_size": [16, 32], "band_height": 48, "channels": [8, 16], "num_res_blocks": 1,
                   "num_train_timesteps": 50, "prediction_type": "v_prediction", "schedule": "cosine",
                   "learning_rate": 1e-3, "warmup_steps": 0, "ema_decay": 0.9, "batch_size": 4, "flip": 0.5,
                   "sample_interval": 0, "sample_steps": 2, "num_sample_images": 2, "device": "cpu", "num_threads": 1},
    },
}


def run_demo(out: Path, quick: bool = False) -> int:
    """Run the demo under ``out``; returns an exit code (0: the synthetic dataset was written and checks out)."""
    BUNDLE = bundle_dir("oct_ddpm")

    out = Path(out)
    cfg = DEMO_SETTINGS["quick" if quick else "full"]
    t0 = time.time()
    data = out / "phantom"
    dl = write_phantom_dataset(data, num=cfg["num_images"], size=cfg["phantom_size"], seed=0)
    report = check_dataset(load_datalist(dl))
    print(report.summary())
    if not report.ok:
        return 1
    unlabelled = out / "unlabelled"
    write_phantom_dataset(unlabelled, num=cfg["num_unlabelled"], size=cfg["phantom_size"], seed=1)
    print(f"\nphantom dataset: {data}\ndatalist: {dl}\nunannotated images: {unlabelled / 'images'}")

    common = dict(cfg["common"], progress=False, seed=0)
    runs = out / "ddpm"
    stages = [
        ("pretrain", {"dataset_dir": str(unlabelled / "images")}),
        ("train_masks", {"dataset_dir": str(data)}),
        ("finetune", {"dataset_dir": str(data), "pretrained_ckpt": str(runs / "pretrain" / "model.pt")}),
    ]
    for stage, extra in stages:
        t = time.time()
        print(f"\n== stage {stage} ==", flush=True)
        run_bundle(BUNDLE, stage_configs(stage), output_dir=str(runs / stage),
                   max_epochs=cfg["epochs"][stage], **common, **extra)
        print(f"stage {stage}: {time.time() - t:.1f} s, weights {runs / stage / 'model.pt'}", flush=True)
    synth = out / "synthetic"
    t = time.time()
    print("\n== synthesis ==", flush=True)
    run_bundle(BUNDLE, stage_configs("synthesize"), output_dir=str(synth), dataset_dir=str(data),
               mask_ckpt=str(runs / "train_masks" / "model.pt"), image_ckpt=str(runs / "finetune" / "model.pt"),
               num_samples=cfg["num_samples"], sampler="ddim", num_inference_steps=cfg["steps"], dmc_smooth=3,
               **common)
    print(f"synthesis: {time.time() - t:.1f} s", flush=True)
    rep = check_dataset(load_datalist(synth / "datalist.json", key="training"))
    print(rep.summary())
    if not rep.ok or rep.num_labelled != cfg["num_samples"]:
        return 1
    print(f"\nsynthetic dataset: {synth} (datalist {synth / 'datalist.json'})\ngrid of (label, image) pairs: "
          f"{synth / 'grid.png'}\ntraining runs: {runs}\ntotal {time.time() - t0:.0f} s")
    return 0
