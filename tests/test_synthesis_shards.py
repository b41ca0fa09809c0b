"""Synthesis that scales out: ``--shard i/n`` runs (one folder or several) and ``merge_synthesis`` (engine level, tiny)."""

from __future__ import annotations

import json

import pytest
import torch
from ignite.engine import Events

from monai_oct.cli import main
from monai_oct.engines.shards import merge_synthesis, parse_shard

from test_diffusion_engines import _pairs, _synthesis, one_thread  # noqa: F401 (one_thread: its autouse fixture)


N = 5  # two uneven shards: 0, 2, 4 and 1, 3


@pytest.fixture(scope="module")
def unsharded(tmp_path_factory):
    """The reference: the whole set written by one unsharded run."""
    out = tmp_path_factory.mktemp("whole")
    _synthesis(out, num_samples=N).run_all()
    return out


def _json(path):
    return json.loads(path.read_text())


def _same_set(merged, whole):
    """The merged folder is what the unsharded run wrote: pair bytes, datalist, manifest but provenance and times."""
    assert _pairs(merged) == _pairs(whole) and len(_pairs(whole)) == 2 * N
    assert (merged / "datalist.json").read_bytes() == (whole / "datalist.json").read_bytes()
    a, b = _json(merged / "manifest.json"), _json(whole / "manifest.json")
    assert len(a.pop("shards")) == 2 and a.pop("seconds") >= 0 and b.pop("seconds") >= 0
    assert a == b
    assert (merged / "grid.png").read_bytes() == (whole / "grid.png").read_bytes()


def test_two_shards_in_one_folder_at_once_then_merge_equal_the_unsharded_set(tmp_path, unsharded):
    """Shard 1/2 runs while shard 0/2 is between batches in the same folder (before: the one ``.lock`` refused
    it); neither writes the datalist or the set manifest; the merge gives the unsharded set byte for byte."""
    out = tmp_path / "s"
    first = _synthesis(out, num_samples=N, shard="0/2")
    during = []

    @first.on(Events.ITERATION_COMPLETED(once=1))
    def second_shard(engine):
        running = _json(out / "manifests" / "shard-0-of-2.json")
        assert running["status"] == "running" and running["indices"] == [0, 2, 4]
        second = _synthesis(out, num_samples=N, shard="1/2")
        second.run_all()
        during.append(second)
        with pytest.raises(RuntimeError, match=r"being written by another synthesis.*lock .*\.lock\.shard-0-of-2"):
            _synthesis(out, num_samples=N, shard="0/2").run_all()  # the same shard twice is still refused

    first.run_all()
    assert during
    assert not (out / "datalist.json").exists() and not (out / "manifest.json").exists()
    assert not list(out.glob(".lock*"))
    m = _json(out / "manifests" / "shard-1-of-2.json")
    assert m["status"] == "complete" and m["shard"] == "1/2" and m["indices"] == [1, 3] and m["num_samples"] == N
    assert {"host", "pid", "started", "ended", "generation", "seconds"} <= set(m)
    assert sorted(m["files"]) == sorted(f"{s}/synth_{i:05d}.png" for i in (1, 3) for s in ("images", "labels"))
    assert m["generation"] == _json(unsharded / "manifest.json")["generation"]

    merge_synthesis(out)
    _same_set(out, unsharded)
    merge_synthesis(out)  # merging again changes nothing
    _same_set(out, unsharded)


def test_two_shard_folders_merged_into_a_third(tmp_path, unsharded, capsys):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    _synthesis(a, num_samples=N, shard="0/2").run_all()
    _synthesis(b, num_samples=N, shard=[1, 2]).run_all()
    before = _pairs(a), _pairs(b)
    assert main(["merge-synthesis", str(c), str(a), str(b)]) == 0
    assert f"merged 2 shard(s): {N} pairs in {c}" in capsys.readouterr().out
    _same_set(c, unsharded)
    assert (_pairs(a), _pairs(b)) == before  # the shard folders are left as they were
    assert sorted(p.name for p in (c / "manifests").iterdir()) == ["shard-0-of-2.json", "shard-1-of-2.json"]
    assert [s["folders"] for s in _json(c / "manifest.json")["shards"]] == [[str(a)], [str(b)]]
    assert not list(c.rglob(".tmp.*"))

    # a pair present twice with other bytes (another set's file in a shard folder): the merge stops, naming both
    (b / "images" / "synth_00003.png").write_bytes((unsharded / "images" / "synth_00000.png").read_bytes())
    assert main(["merge-synthesis", str(c), str(a), str(b)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "images/synth_00003.png differs between" in err and str(b) in err and str(c) in err, err


def test_killed_shard_is_refused_by_the_merge_and_resumed_writes_only_its_missing_pair(tmp_path, unsharded, capsys):
    """A shard killed after some pairs (simulated: one pair deleted, its manifest marked running): the merge
    names it; rerun, it writes exactly the missing pair, and leaves another shard's temporary file alone
    (before: ``clean()`` removed every ``.tmp.*`` in the folder, a concurrent shard's half-written file too)."""
    out = tmp_path / "s"
    _synthesis(out, num_samples=N, shard="0/2").run_all()
    _synthesis(out, num_samples=N, shard="1/2").run_all()
    path = out / "manifests" / "shard-1-of-2.json"
    m = _json(path)
    path.write_text(json.dumps(dict(m, status="running")))
    (out / "images" / "synth_00003.png").unlink()
    assert main(["merge-synthesis", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{path} (status 'running')" in err, err

    other_tmp = out / "images" / ".tmp.synth_00000.png"  # shard 0's file, as if being written right now
    other_tmp.write_bytes(b"half")
    own_tmp = out / "labels" / ".tmp.synth_00003.png"  # the killed shard's own leftover
    own_tmp.write_bytes(b"half")
    resumed = _synthesis(out, num_samples=N, shard="1/2")
    written = []
    resumed.add_event_handler(Events.ITERATION_COMPLETED, lambda e: written.extend(e.state.output["indices"]))
    resumed.run_all()
    assert resumed.skipped == 1 and written == [3]
    assert other_tmp.exists() and not own_tmp.exists()
    other_tmp.unlink()
    merge_synthesis(out)
    _same_set(out, unsharded)


@pytest.mark.parametrize("value, match", [
    ("3/2", r"--shard '3/2': the shard index i must be in 0\.\.1"),
    ("x", r"--shard 'x': expected i/n"),
    ("a/2", r"--shard 'a/2': i and n must be integers"),
    ("0/0", r"--shard '0/0': the number of shards n must be >= 1"),
    ("-1/2", r"--shard '-1/2': the shard index"),
    (1, r"--shard 1: expected i/n"),
    ("1/2/3", r"--shard '1/2/3': expected i/n"),
])
def test_bad_shard_values_name_the_value(tmp_path, value, match):
    with pytest.raises(ValueError, match=match):
        _synthesis(tmp_path / "s", shard=value)
    assert not (tmp_path / "s").exists()


def test_shard_values():
    assert parse_shard(None) is None and parse_shard("null") is None and parse_shard("") is None
    assert parse_shard("1/2") == (1, 2) and parse_shard([0, 1]) == (0, 1) and parse_shard(" 2 / 3 ") == (2, 3)


def test_merge_errors_missing_shard_mixed_generations_none(tmp_path, capsys):
    one = tmp_path / "one"
    _synthesis(one, num_samples=N, shard="0/3").run_all()
    _synthesis(one, num_samples=N, shard="2/3").run_all()
    with pytest.raises(ValueError, match=r"2 of the 5 indices are in no shard \(1, 4\); missing shard\(s\): shard-1-of-3"):
        merge_synthesis(one)
    assert not (one / "datalist.json").exists() and not (one / "manifest.json").exists()

    # another seed into the same folder: the shard run itself stops, naming the other shard's manifest
    with pytest.raises(ValueError, match=r"shard shard-1-of-3 differs from .*shard-0-of-3\.json \(seed: 0 -> 1"):
        _synthesis(one, num_samples=N, shard="1/3", seed=1).run_all()
    # in a folder of its own it runs; the merge stops, naming the keys and both files
    other = tmp_path / "other"
    _synthesis(other, num_samples=N, shard="1/3", seed=1).run_all()
    assert main(["merge-synthesis", str(tmp_path / "out"), str(one), str(other)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "shards of different generations" in err and "seed: 0 -> 1" in err, err
    assert str(one / "manifests" / "shard-0-of-3.json") in err and str(other / "manifests" / "shard-1-of-3.json") in err
    assert not (tmp_path / "out" / "images").exists()  # nothing copied

    # overlapping shards (0/2 and 0/4 share index 0, 4) and a run of another num_samples
    lap = tmp_path / "lap"
    _synthesis(lap, num_samples=N, shard="0/2").run_all()
    _synthesis(lap, num_samples=N, shard="0/4").run_all()
    with pytest.raises(ValueError, match=r"indices in two shards: 0 \(shard-0-of-2 and shard-0-of-4\), 4"):
        merge_synthesis(lap)
    _synthesis(tmp_path / "n6", num_samples=6, shard="1/2").run_all()
    with pytest.raises(ValueError, match=r"num_samples: 5 -> 6"):
        merge_synthesis(tmp_path / "out", [tmp_path / "lap", tmp_path / "n6"])

    with pytest.raises(ValueError, match=r"no shard manifest"):
        merge_synthesis(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no such shard folder"):
        merge_synthesis(tmp_path / "out", [tmp_path / "nope"])


def test_torchrun_ranks_split_a_shard_further(tmp_path):
    """Under torchrun a shard's ranks share its indices: shard 1/2 of 7 is 1, 3, 5; rank 0 of 2 writes 1, 5."""
    eng = _synthesis(tmp_path / "s", num_samples=7, shard="1/2")
    assert list(eng.indices()) == [1, 3, 5]
    assert eng.pending(rank=0, world_size=2) == [[1, 5]] and eng.pending(rank=1, world_size=2) == [[3]]
    assert eng.manifest_path == tmp_path / "s" / "manifests" / "shard-1-of-2.json"
    assert eng.lock.path == tmp_path / "s" / ".lock.shard-1-of-2"


def _class_synthesis(out, shard=None, masks=True):
    """A tiny class-conditioned synthesis: 5 pairs of classes MS, MS, healthy, DME, DME (``masks=False``: class
    only, images without labels)."""
    from monai_oct.core.classes import OCT_PATHOLOGY, class_plan
    from monai_oct.engines.sampler import DiffusionSampler
    from monai_oct.engines.synthesis import SamplerEngine
    from monai_oct.engines.writer import set_writer
    from monai_oct.networks import conditional_diffusion_unet
    from monai_oct.recipes.sources import LabelBank, NoMaskSource
    from monai_oct.schedulers import diffusion_scheduler

    torch.manual_seed(0)
    net = conditional_diffusion_unet(1, 3, channels=(8, 16), num_res_blocks=1, num_class_embeds=OCT_PATHOLOGY.num_class_embeds)
    labels = torch.zeros(2, 1, 16, 16, dtype=torch.long)
    labels[0, :, 4:9], labels[1, :, 6:12] = 1, 2
    ids = class_plan(OCT_PATHOLOGY, class_samples={"MS": 2, "healthy": 1, "DME": 2})
    sampler = DiffusionSampler(diffusion_scheduler("ddim", 20, "cosine", "v_prediction"), 2)
    source = LabelBank(labels) if masks else NoMaskSource([16, 16], 3)
    return SamplerEngine(N, source, net, sampler, [16, 16], 3, set_writer(out, labels=masks), batch_size=2, seed=0,
                         progress=False, config={"label_datalist": None}, shard=shard, class_table=OCT_PATHOLOGY,
                         class_ids=ids)


@pytest.mark.parametrize("masks", [True, False], ids=["on_label_maps", "class_only"])
def test_merged_class_conditional_shards_keep_every_pairs_class(tmp_path, masks):
    """Before, a shard manifest recorded no classes and the merge listed the pairs without them (an unsharded
    class-conditional set lists each pair's class in datalist.json and ``classes`` in manifest.json); a class-only
    set (images, no labels) did not merge at all (the merge always looked for labels)."""
    whole, out = tmp_path / "whole", tmp_path / "sharded"
    _class_synthesis(whole, masks=masks).run_all()
    for s in ("0/2", "1/2"):
        _class_synthesis(out, shard=s, masks=masks).run_all()
    assert _json(out / "manifests" / "shard-0-of-2.json")["classes"] == ["MS", "healthy", "DME"]  # pairs 0, 2, 4
    merge_synthesis(out)
    if masks:
        _same_set(out, whole)
    else:
        png = lambda d: {p.name: p.read_bytes() for p in sorted((d / "images").glob("*.png"))}  # noqa: E731
        assert len(png(whole)) == N and png(out) == png(whole) and not (out / "labels").exists()
        assert (out / "datalist.json").read_bytes() == (whole / "datalist.json").read_bytes()
    assert [it["class"] for it in _json(out / "datalist.json")["training"]] == ["MS", "MS", "healthy", "DME", "DME"]


def _band_synthesis(out, shard=None):
    """A tiny unconditional 3-band synthesis (BandSynthesis + BandWriter, pixel space)."""
    from monai_oct.engines.bands import BandSynthesis
    from monai_oct.engines.sampler import DiffusionSampler
    from monai_oct.engines.writer import BandWriter
    from monai_oct.networks import conditional_diffusion_unet
    from monai_oct.schedulers import diffusion_scheduler

    torch.manual_seed(0)
    net = conditional_diffusion_unet(3, 0, channels=(8, 16), num_res_blocks=1)
    sampler = DiffusionSampler(diffusion_scheduler("ddim", 20, "cosine", "v_prediction"), 2)
    return BandSynthesis(N, net, sampler, [16, 16], 3, BandWriter(out), batch_size=2, seed=0, progress=False,
                         config={}, shard=shard)


def test_c_band_shards_merge_into_the_unsharded_set(tmp_path):
    """Before, merge-synthesis rebuilt a PNG PairWriter for every set, so C-band (.npy, no label) shards failed
    with 'listed but missing' on labels that never exist; now the manifest's writer format picks BandWriter."""
    whole, out = tmp_path / "whole", tmp_path / "sharded"
    _band_synthesis(whole).run_all()
    for s in ("0/2", "1/2"):
        _band_synthesis(out, shard=s).run_all()
    assert not (out / "datalist.json").exists()
    merge_synthesis(out)
    npy = lambda d: {p.name: p.read_bytes() for p in sorted((d / "images").glob("*.npy"))}  # noqa: E731
    assert len(npy(whole)) == N and npy(out) == npy(whole) and not (out / "labels").exists()
    assert (out / "datalist.json").read_bytes() == (whole / "datalist.json").read_bytes()
    a, b = _json(out / "manifest.json"), _json(whole / "manifest.json")
    assert len(a.pop("shards")) == 2 and a.pop("seconds") >= 0 and b.pop("seconds") >= 0 and a == b
    assert (out / "grid.png").read_bytes() == (whole / "grid.png").read_bytes()
