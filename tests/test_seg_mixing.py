"""Real + synthetic mixing: datalists tagged by source, a sampler that keeps the set ratio."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from monai_oct.core.io import DataError
from monai_oct.recipes.items import find_datalist, resolve_items
from monai_oct.recipes.mixing import RatioSampler, quotas


def _datalist(path, n, prefix, key="train"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({key: [{"image": f"{prefix}{i}.png", "label": f"{prefix}{i}_l.png"} for i in range(n)]}))
    return path


def test_quotas():
    assert quotas(10, [1, 1]) == [5, 5]
    assert quotas(10, [1, 2]) == [3, 7]
    assert quotas(7, [0.5, 0.5]) == [4, 3]
    assert quotas(5, [1, 0]) == [5, 0]
    with pytest.raises(ValueError):
        quotas(5, [0, 0])


def test_datalists_to_mix_are_tagged_by_source(tmp_path):
    real = _datalist(tmp_path / "real" / "datalist.json", 4, "r")
    _datalist(tmp_path / "synth" / "dl.json", 12, "s", key="synthetic")
    data = resolve_items([str(real), "synth/dl.json"], key=["train", "synthetic"], dataset_dir=tmp_path)
    assert Counter(it["source"] for it in data) == {0: 4, 1: 12}
    assert data[4]["image"] == str(tmp_path / "synth" / "s0.png")  # relative to the datalist's folder
    assert find_datalist(tmp_path / "real") == str(real)
    with pytest.raises(DataError, match="nope.json"):
        resolve_items("nope.json", dataset_dir=tmp_path)


def test_relative_datalists_resolve_like_a_shell_user_means(tmp_path, monkeypatch):
    """A relative dataset_dir gives the same files as an absolute one; a cwd-relative datalist is found too."""
    real = _datalist(tmp_path / "data" / "real" / "datalist_train.json", 3, "r")
    _datalist(tmp_path / "runs" / "synth" / "datalist.json", 2, "s")
    monkeypatch.chdir(tmp_path)
    found = find_datalist("data/real", "train")
    assert found == str(real)
    data = resolve_items([found, "runs/synth/datalist.json"], dataset_dir="data/real")
    assert Counter(it["source"] for it in data) == {0: 3, 1: 2}
    assert data[3]["image"] == str(tmp_path / "runs" / "synth" / "s0.png")


def test_sampler_draws_sources_in_the_set_ratio(tmp_path):
    data = resolve_items([_datalist(tmp_path / "r.json", 6, "r"), _datalist(tmp_path / "s.json", 40, "s")])
    sampler = RatioSampler(data, weights=[1, 3], num_samples=40, seed=1)
    for _ in range(3):  # every epoch keeps the ratio exactly
        idx = list(sampler)
        counts = Counter(data[i]["source"] for i in idx)
        assert counts == {0: 10, 1: 30}
        # the small real source (6 items) is repeated to fill its 10 draws, each item at least once
        assert set(i for i in idx if data[i]["source"] == 0) == set(range(6))
    # same seed -> same order; another epoch -> another order
    a, b = RatioSampler(data, [1, 3], 40, seed=1), RatioSampler(data, [1, 3], 40, seed=1)
    ea, eb = list(a), list(b)
    assert ea == eb and list(a) != ea
    # default: proportional to source sizes, every item once per epoch
    plain = RatioSampler(data)
    assert sorted(plain) == list(range(len(data)))
    # a weight of 0 removes a source
    assert all(data[i]["source"] == 1 for i in RatioSampler(data, [0, 1], 20))
    with pytest.raises(ValueError, match="mixing weights"):
        RatioSampler(data, [1, 1, 1])
    with pytest.raises(ValueError, match="no items"):
        RatioSampler([2, 0], [1, 1])


def test_sampler_in_a_dataloader_yields_both_sources():
    data = [{"x": i, "source": 0} for i in range(5)] + [{"x": 100 + i, "source": 1} for i in range(15)]
    loader = torch.utils.data.DataLoader(data, batch_size=4, sampler=RatioSampler(data, [1, 1], num_samples=20, seed=0))
    xs = torch.cat([b["x"] for b in loader]).numpy()
    assert len(xs) == 20 and (xs < 100).sum() == 10 and (xs >= 100).sum() == 10
    # items without a "source" field (a list MONAI Label passes) form one source
    assert sorted(RatioSampler([{"image": "a"}, {"image": "b"}])) == [0, 1]
    assert np.unique(xs[xs >= 100]).size == 10


def test_mixed_sources_with_different_fields_collate(phantom_dir, tmp_path):
    """A pseudo-labelled set names each item's `condition`; mixed with real items the batches still collate."""
    from monai.data import DataLoader, Dataset

    from monai_oct.recipes.seg_pipelines import seg_train_transforms

    items = json.loads((phantom_dir / "datalist.json").read_text())["train"]
    extra = [{**it, "condition": it["label"]} for it in items]
    (phantom_dir / "pseudo.json").write_text(json.dumps({"train": extra}))
    data = resolve_items([phantom_dir / "datalist.json", phantom_dir / "pseudo.json"])
    ds = Dataset(data, transform=seg_train_transforms([32, 32], flip=0.0))
    batch = next(iter(DataLoader(ds, batch_size=len(data), shuffle=False)))
    assert set(batch) == {"image", "label", "source"} and batch["image"].shape[0] == len(data)
