"""Multi-band (hyperspectral) fundus phantom: the fundus phantom's anatomy with physically grounded spectra.

The anatomy (FOV, optic disc, macula, artery and vein trees) is :func:`monai_oct.phantoms.fundus.fundus_geometry`,
the same as the RGB phantom's for the same seed. Each channel is the reflectance at one wavelength (narrow bands:
the centre wavelength only), for any list of wavelengths; the default is 16 bands from 465 to 900 nm (the
hyperspectral retinal camera of issue 17).

Model (a modified Beer-Lambert law: absorbers add in optical density, each with an effective double-pass path):

- **background fundus**: ``R_bg = R_tissue * exp(-2 (m * mu_mel * l_mel + b * mu_blood(S_ch) * l_ch + mp * A_mac))``:
  melanin of the RPE/choroid (``mu_mel = mu_mel(500 nm) * exp(-(lambda - 500 nm) / 90 nm)``, an exponential decay
  with wavelength; the decay length is a phantom parameter, not a measured value), choroidal blood at
  ``S_ch = 0.95`` saturation whose amount ``b`` follows a low-frequency choroidal texture, and at the macula
  more melanin and the macular pigment (xanthophyll, modelled as a Gaussian absorption band at 460 nm, 25 nm wide);
- **vessels**: the background seen through blood, ``R = R_bg * exp(-2 * opacity * d * mu_blood(S))`` with the
  rasterised cross profile as ``opacity`` (thin vessels fainter), arteries at ``S ~ 0.97`` and veins at ``S ~ 0.60``
  saturation (per image ``N(0.97, 0.01)`` and ``N(0.60, 0.03)``); arteries and veins differ most in 540-600 nm and
  not at all at the isosbestic points (:data:`ISOSBESTIC_NM`), where both haemoglobins absorb alike;
- **optic nerve head**: bright, no melanin (no RPE), a little capillary blood (``S = 0.9``), less at the cup;
- ``mu_blood(S) = ln(10) * C_Hb * (S * eps_HbO2 + (1 - S) * eps_Hb)``, ``C_Hb`` = 150 g/L / 64 500 g/mol.

Absorption values: :data:`HB_EXTINCTION`, the molar extinction coefficients of oxygenated and deoxygenated
haemoglobin in cm^-1/M tabulated by S. Prahl (Oregon Medical Laser Center, "Optical absorption of hemoglobin",
1999, compiled from W. B. Gratzer and N. Kollias), sampled every 10 nm from 450 to 920 nm and interpolated
linearly in between. Per image the illumination (level, vignetting, a linear gradient), the melanin amount, the
choroidal blood and the saturations vary with the seed; then a mild blur and Gaussian noise. Values are relative
reflectances clipped to [0, 1] (a white reference of 1), 0 outside the FOV.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from monai_oct.core.datalist import write_datalists
from monai_oct.core.io import write_json, write_npy, write_png
from monai_oct.core.labels import UNANNOTATED
from monai_oct.core.seeding import sample_seed
from monai_oct.phantoms.fundus import ARTERY, CROSSING, VEIN, fundus_geometry

__all__ = [
    "HB_EXTINCTION", "ISOSBESTIC_NM", "DEFAULT_WAVELENGTHS", "RGB_WAVELENGTHS", "STRUCTURES", "SPECTRAL_PARAMETERS",
    "haemoglobin_extinction", "blood_absorption", "melanin_absorption", "structure_spectra", "multiband_phantom", "write_multiband_dataset",
]

#: ``(wavelength nm, eps HbO2, eps Hb)`` in cm^-1/M (Prahl 1999, every 10 nm).
HB_EXTINCTION = np.array([
    (450, 62816.0, 103292.0), (460, 44480.0, 23388.8), (470, 33209.2, 16156.4), (480, 26629.2, 14550.0),
    (490, 23684.4, 16684.0), (500, 20932.8, 20035.2), (510, 20035.2, 25773.6), (520, 24202.4, 31589.6),
    (530, 39956.8, 39036.4), (540, 53236.0, 46592.0), (550, 43016.0, 53412.0), (560, 32613.2, 53788.0),
    (570, 44496.0, 45072.0), (580, 50104.0, 37020.0), (590, 14400.8, 28324.4), (600, 3200.0, 14677.2),
    (610, 1506.0, 9443.6), (620, 942.0, 6509.6), (630, 610.0, 5148.8), (640, 442.0, 4345.2),
    (650, 368.0, 3750.12), (660, 319.6, 3226.56), (670, 294.0, 2795.12), (680, 277.6, 2407.92),
    (690, 276.0, 2051.96), (700, 290.0, 1794.28), (710, 314.0, 1540.48), (720, 348.0, 1325.88),
    (730, 390.0, 1102.2), (740, 446.0, 1115.88), (750, 518.0, 1405.24), (760, 586.0, 1548.52),
    (770, 650.0, 1311.88), (780, 710.0, 1075.44), (790, 756.0, 890.4), (800, 816.0, 761.72),
    (810, 864.0, 717.08), (820, 916.0, 693.76), (830, 974.0, 693.04), (840, 1022.0, 692.36),
    (850, 1058.0, 691.32), (860, 1092.0, 694.32), (870, 1128.0, 705.84), (880, 1154.0, 726.44),
    (890, 1178.0, 743.6), (900, 1198.0, 761.84), (910, 1214.0, 774.56), (920, 1224.0, 777.36),
])
#: Isosbestic points (nm) within 465-900 nm: where the linearly interpolated HbO2 and Hb curves of the table cross
#: (the literature gives ~500, 529, 545, 570, 584 and 797 nm; the table also crosses at 456.6 nm).
ISOSBESTIC_NM = (501.4, 528.9, 543.9, 570.4, 584.8, 797.1)
#: 16 bands, 465-900 nm, evenly spaced (the hyperspectral camera of issue 17).
DEFAULT_WAVELENGTHS = tuple(float(x) for x in np.linspace(465.0, 900.0, 16))
#: Centre wavelengths (nm) of the red, green and blue channels of a fundus camera: the 3-band case.
RGB_WAVELENGTHS = (600.0, 540.0, 470.0)
#: Ids of :func:`multiband_phantom`'s ``structures`` mask (255, UNANNOTATED: outside the FOV and crossings).
STRUCTURES = {0: "background", 1: "artery", 2: "vein", 3: "onh"}

#: Nominal parameters of the model (lengths in cm); :func:`multiband_phantom` varies some of them per image.
SPECTRAL_PARAMETERS: dict[str, float] = {
    "hb_molar": 150.0 / 64500.0,  # haemoglobin in whole blood, mol/L
    "tissue_reflectance": 0.8,  # R_tissue: reflectance without absorbers
    "onh_reflectance": 0.95,
    "melanin_mua_500": 0.8,  # mu_mel(500 nm) * l_mel (optical density, one pass)
    "melanin_decay_nm": 90.0,
    "choroid_path": 8e-4,  # l_ch
    "choroid_saturation": 0.95,
    "vessel_path": 2.5e-3,  # d: effective path through a vessel at full opacity (vein contrast 67 % at 560 nm)
    "artery_saturation": 0.97,
    "vein_saturation": 0.60,
    "onh_path": 1e-3,
    "onh_saturation": 0.9,
    "macular_pigment": 0.3,  # optical density at 460 nm at the foveal centre
}


def haemoglobin_extinction(wavelengths: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Molar extinction coefficients ``(eps_HbO2, eps_Hb)`` (cm^-1/M) at ``wavelengths`` (nm), interpolated linearly.

    Raises:
        ValueError: for a wavelength outside the table (450-920 nm).
    """
    lam = np.asarray(wavelengths, dtype=np.float64)
    lo, hi = HB_EXTINCTION[0, 0], HB_EXTINCTION[-1, 0]
    if lam.ndim != 1 or lam.size == 0 or np.any((lam < lo) | (lam > hi)):
        raise ValueError(f"wavelengths must be a non-empty list within {lo:.0f}-{hi:.0f} nm (the haemoglobin table), "
                         f"got {np.asarray(wavelengths).tolist()}")
    return (np.interp(lam, HB_EXTINCTION[:, 0], HB_EXTINCTION[:, 1]),
            np.interp(lam, HB_EXTINCTION[:, 0], HB_EXTINCTION[:, 2]))


def blood_absorption(wavelengths: Sequence[float], saturation: float, hb_molar: float = SPECTRAL_PARAMETERS["hb_molar"]
                     ) -> np.ndarray:
    """Absorption coefficient ``mu_a`` (cm^-1) of whole blood at oxygen ``saturation`` (0-1) per wavelength."""
    eo, ed = haemoglobin_extinction(wavelengths)
    return np.log(10.0) * hb_molar * (saturation * eo + (1.0 - saturation) * ed)


def melanin_absorption(wavelengths: Sequence[float], at_500: float = SPECTRAL_PARAMETERS["melanin_mua_500"],
                       decay_nm: float = SPECTRAL_PARAMETERS["melanin_decay_nm"]) -> np.ndarray:
    """Melanin optical density (one pass) per wavelength: ``at_500 * exp(-(lambda - 500) / decay_nm)``."""
    return at_500 * np.exp(-(np.asarray(wavelengths, dtype=np.float64) - 500.0) / decay_nm)


def _macular_pigment(lam: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * ((lam - 460.0) / 25.0) ** 2)


def structure_spectra(wavelengths: Sequence[float] = DEFAULT_WAVELENGTHS, **overrides: float) -> dict[str, np.ndarray]:
    """Noise-free reflectance spectra of the structures at nominal parameters (a full-opacity vessel, no macula).

    Args:
        wavelengths: nm, within 450-920.
        overrides: values replacing :data:`SPECTRAL_PARAMETERS` entries.

    Returns:
        ``{"background", "artery", "vein", "onh": (C,) reflectance}``.

    Raises:
        ValueError: for an unknown parameter or a wavelength outside the table.
    """
    unknown = set(overrides) - set(SPECTRAL_PARAMETERS)
    if unknown:
        raise ValueError(f"unknown spectral parameters {sorted(unknown)}; known: {sorted(SPECTRAL_PARAMETERS)}")
    p = {**SPECTRAL_PARAMETERS, **overrides}
    lam = np.asarray(wavelengths, dtype=np.float64)
    mel = melanin_absorption(lam, p["melanin_mua_500"], p["melanin_decay_nm"])
    choroid = blood_absorption(lam, p["choroid_saturation"], p["hb_molar"]) * p["choroid_path"]
    bg = p["tissue_reflectance"] * np.exp(-2.0 * (mel + choroid))

    def vessel(sat: float) -> np.ndarray:
        return bg * np.exp(-2.0 * blood_absorption(lam, sat, p["hb_molar"]) * p["vessel_path"])

    onh_od = blood_absorption(lam, p["onh_saturation"], p["hb_molar"]) * p["onh_path"]
    onh = p["onh_reflectance"] * np.exp(-2.0 * onh_od)
    return {"background": bg, "artery": vessel(p["artery_saturation"]), "vein": vessel(p["vein_saturation"]),
            "onh": onh}


def multiband_phantom(size: int | Sequence[int] = 256, wavelengths: Sequence[float] = DEFAULT_WAVELENGTHS,
                      seed: int = 0, min_width: float = 0.5, noise: float = 0.003) -> dict[str, Any]:
    """One multi-band fundus phantom (see the module docstring for the model).

    Args:
        size: ``H`` (square) or ``(H, W)``; at least 32.
        wavelengths: centre wavelength (nm) of each band, any number, each within 450-920 nm.
        seed: the only source of randomness; the same seed gives identical arrays (and the anatomy of
            ``fundus_phantom(size, seed, min_width)``).
        min_width: vessels stop where they would be thinner than this many pixels (0.5: vessels even at 64 x 64).
        noise: standard deviation of the additive Gaussian noise of every band (0.003: a signal-to-noise ratio of
            ~150 at reflectance 0.5; at 0.01 the artery/vein separability of 64 px phantoms falls from 0.91 to 0.67).

    Returns:
        ``{"image": (C, H, W) float32 in [0, 1], "structures": (H, W) uint8 (0 background fundus, 1 artery, 2 vein,
        3 optic nerve head, 255 outside the FOV and at artery/vein crossings), "label": (H, W) FUNDUS_AV ids,
        "fov": (H, W) bool, "wavelengths": (C,) float64 nm, "parameters": the per-image model values}``.

    Raises:
        ValueError: for a size below 32 x 32 or a wavelength outside the table.
    """
    lam = np.asarray(wavelengths, dtype=np.float64)
    haemoglobin_extinction(lam)  # fail on a bad wavelength before any work
    rng = np.random.default_rng(seed)
    g = fundus_geometry(size, rng, min_width)
    label, fov, rho, xx, yy = g["label"], g["fov"], g["rho"], g["xx"], g["yy"]
    h, w = label.shape
    p = dict(SPECTRAL_PARAMETERS)
    p.update(melanin_mua_500=p["melanin_mua_500"] * rng.uniform(0.6, 1.5),
             choroid_path=p["choroid_path"] * rng.uniform(0.7, 1.3),
             artery_saturation=float(np.clip(rng.normal(0.97, 0.01), 0.9, 1.0)),
             vein_saturation=float(np.clip(rng.normal(0.60, 0.03), 0.45, 0.75)),
             illumination=rng.uniform(0.85, 1.1))
    texture = ndimage.gaussian_filter(rng.normal(size=(h, w)), 6 * g["scale"])
    texture = texture / (texture.std() + 1e-9)
    gradient = rng.normal(0, 0.06, 2)
    c, r = g["centre"], g["radius"]
    illum = p["illumination"] * ((1.0 - rng.uniform(0.25, 0.4) * rho ** rng.uniform(2.0, 3.0))
                                 * (1.0 + gradient[0] * (xx - c[0]) / r + gradient[1] * (yy - c[1]) / r))
    mpx, dpx, ddx = g["macula_px"], g["disc_px"], g["disc_diameter_px"]
    mac = np.exp(-0.5 * ((xx - mpx[0]) ** 2 + (yy - mpx[1]) ** 2) / (0.6 * ddx) ** 2)

    # optical densities (one pass), per band x pixel, then R = R0 exp(-2 OD)
    mel = melanin_absorption(lam, p["melanin_mua_500"], p["melanin_decay_nm"])[:, None, None] * (1.0 + 0.5 * mac)[None]
    chor = (blood_absorption(lam, p["choroid_saturation"])[:, None, None]
            * (p["choroid_path"] * np.clip(1.0 + 0.15 * texture, 0.3, None))[None])
    pigment = p["macular_pigment"] * _macular_pigment(lam)[:, None, None] * mac[None]
    bg = p["tissue_reflectance"] * np.exp(-2.0 * (mel + chor + pigment))
    ell = g["disc_ellipse"]
    disc_soft = 1.0 / (1.0 + np.exp(-(1.0 - ell) / 0.07))
    cup_x = dpx[0] + g["temporal"] * 0.1 * ddx
    cup = np.exp(-0.5 * (((xx - cup_x) ** 2 + (yy - dpx[1]) ** 2) / (0.2 * ddx) ** 2))
    onh = p["onh_reflectance"] * np.exp(-2.0 * blood_absorption(lam, p["onh_saturation"])[:, None, None]
                                        * (p["onh_path"] * (1.0 - 0.7 * cup))[None])
    img = bg * (1.0 - disc_soft)[None] + onh * disc_soft[None]
    vessel_od = (blood_absorption(lam, p["artery_saturation"])[:, None, None] * g["artery_opacity"][None]
                 + blood_absorption(lam, p["vein_saturation"])[:, None, None] * g["vein_opacity"][None])
    img = img * np.exp(-2.0 * p["vessel_path"] * vessel_od) * illum[None]
    blur = 0.5 * max(g["scale"], 0.5)
    img = ndimage.gaussian_filter(img, (0, blur, blur))
    img = img + rng.normal(0.0, noise, img.shape)
    img *= np.clip((1.0 - rho) * r / 1.5, 0.0, 1.0)[None]

    structures = np.zeros((h, w), dtype=np.uint8)
    structures[ell <= 1.0] = 3
    structures[label == ARTERY] = 1
    structures[label == VEIN] = 2
    structures[(label == CROSSING) | ~fov] = UNANNOTATED
    return {"image": np.clip(img, 0.0, 1.0).astype(np.float32), "structures": structures, "label": label,
            "fov": fov, "wavelengths": lam, "parameters": p}


def write_multiband_dataset(out_dir: str | os.PathLike, num: int = 32, size: int | Sequence[int] = 64,
                            wavelengths: Sequence[float] = DEFAULT_WAVELENGTHS, seed: int = 0,
                            key: str = "training") -> Path:
    """Write a set of multi-band phantoms and return its datalist.

    Layout (paths in the datalist relative to ``out_dir``):

    - ``images/mb_XXXX.npy``: the ``(C, H, W)`` float32 reflectances in [0, 1] (one ``.npy`` per image: any band
      count, exact values, read by :class:`~monai_oct.transforms.io.LoadBandsd`);
    - ``structures/mb_XXXX.png``: the structure ids of :data:`STRUCTURES` (255 outside the FOV and at crossings);
    - ``bands.json``: ``{"wavelengths": [...], "structures": STRUCTURES, "seed", "num"}``;
    - ``datalist.json``: ``{key: [{"image", "structures", "id"}]}``, written last.

    Image ``i`` is ``multiband_phantom(size, wavelengths, seed=sample_seed(seed, i))``, so sets written with
    different seeds share no image. Every file is written atomically; an image whose files exist is not redone
    (a killed run started again finishes the set).

    Args:
        out_dir: dataset folder.
        num: number of images (>= 1).
        size: ``H`` (square) or ``(H, W)``.
        wavelengths: band centres in nm (default 16 bands 465-900 nm).
        seed: the set's seed.
        key: the datalist's list name.

    Returns:
        ``out_dir/datalist.json``.

    Raises:
        ValueError: for ``num`` < 1, or as :func:`multiband_phantom` (a size below 32, a wavelength outside the table).
    """
    if int(num) < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    lam = [float(x) for x in wavelengths]
    haemoglobin_extinction(lam)  # a bad wavelength fails before anything is written
    out = Path(out_dir)
    items = []
    for i in range(int(num)):
        name = f"mb_{i:04d}"
        ip, sp = out / "images" / f"{name}.npy", out / "structures" / f"{name}.png"
        if not (ip.is_file() and sp.is_file()):
            ph = multiband_phantom(size, lam, seed=sample_seed(seed, i))
            write_png(sp, ph["structures"])
            write_npy(ip, ph["image"])
        items.append({"image": str(ip), "structures": str(sp), "id": name})
    write_json(out / "bands.json", {"wavelengths": lam, "structures": STRUCTURES, "seed": int(seed), "num": int(num)})
    return write_datalists(out / "datalist.json", {key: items}, root=out)
