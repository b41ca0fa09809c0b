"""Class-conditional synthesis (issue 18): the class table, class dropout in training, classifier-free guidance on
the class, the configs pair on the phantom, and checkpoints without classes (unchanged, and refusing a class)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from monai_oct.core.classes import OCT_PATHOLOGY, ClassTable, class_plan
from monai_oct.core.datalist import load_datalist, write_datalist
from monai_oct.core.io import DataError
from monai_oct.core.seeding import sample_generators
from monai_oct.engines.diffusion import DiffusionTrainer
from monai_oct.engines.latent import LatentDiffusionTrainer, LatentSampler
from monai_oct.engines.sampler import DiffusionSampler
from monai_oct.engines.synthesis import SamplerEngine
from monai_oct.engines.writer import set_writer
from monai_oct.bundle import stage_configs
from monai_oct.networks.autoencoder import LatentCodec, autoencoder_kl
from monai_oct.networks.checkpoint import save_checkpoint, trained_class_embeds, write_model_info
from monai_oct.networks.diffusion import conditional_diffusion_unet
from monai_oct.recipes.classes import synthesis_classes
from monai_oct.recipes.sources import build_label_source
from monai_oct.schedulers import diffusion_scheduler

from conftest import OCT_DDPM_BUNDLE, run_stage

K = OCT_PATHOLOGY.num_class_embeds  # 3 classes + the null class


def tiny_unet(num_class_embeds=K, condition_channels=0, seed=0):
    torch.manual_seed(seed)
    return conditional_diffusion_unet(1, condition_channels, channels=(8, 16), num_res_blocks=1,
                                      num_class_embeds=num_class_embeds)


# ---- the class table --------------------------------------------------------------------------------------------

def test_class_lookup_by_field_and_file_name_rules():
    t = OCT_PATHOLOGY
    assert t.names == ["healthy", "DME", "MS"] and t.null_id == 3 and t.num_class_embeds == 4
    assert t.class_of({"image": "/data/duke_dme/train/images/Subject_01_00.png"}) == 1
    assert t.class_of({"image": "/data/hcms/hc01_spectralis_macula_v1_s1_R_frame_001.png"}) == 0
    assert t.class_of({"image": "/data/hcms/ms01_spectralis_macula_v1_s1_R_frame_001.png"}) == 2
    # the field wins over the rule, by name or id
    assert t.class_of({"image": "Subject_01_00.png", "class": "healthy"}) == 0
    assert t.class_of({"image": "x.png", "class": 2}) == 2
    assert [it["class_id"] for it in t.label_items([{"image": "hc01_a.png"}, {"image": "b.png", "class": "DME"}])] == [0, 1]


def test_unknown_class_names_the_file_and_the_known_classes():
    with pytest.raises(DataError, match=r"images/a\.png.*unknown class 'drusen'.*0 healthy, 1 DME, 2 MS"):
        OCT_PATHOLOGY.class_of({"image": "images/a.png", "class": "drusen"})
    with pytest.raises(DataError, match=r"images/a\.png.*unknown class 7"):
        OCT_PATHOLOGY.class_of({"image": "images/a.png", "class": 7})
    with pytest.raises(DataError, match=r"phantom_0001\.png: no class.*hc01_\* -> healthy.*\['healthy', 'DME', 'MS'\]"):
        OCT_PATHOLOGY.label_items([{"image": "hc01_a.png"}, {"image": "/d/phantom_0001.png"}])
    with pytest.raises(ValueError, match="rules .* name classes outside"):
        ClassTable("t", {0: "a"}, rules=(("x*", "b"),))


def test_class_plan():
    assert class_plan(OCT_PATHOLOGY, class_samples={"MS": 2, "healthy": 1}) == [2, 2, 0]
    assert class_plan(OCT_PATHOLOGY, "DME", {"MS": 2}, num_samples=3) == [1, 1, 1]  # class_name wins
    assert class_plan(OCT_PATHOLOGY) is None
    with pytest.raises(ValueError, match="class_name: unknown class 'AMD'.*0 healthy"):
        class_plan(OCT_PATHOLOGY, "AMD", num_samples=2)
    with pytest.raises(ValueError, match="sum to 3 samples, num_samples is 4"):
        class_plan(OCT_PATHOLOGY, class_samples={"MS": 2, "DME": 1}, num_samples=4)


# ---- training ---------------------------------------------------------------------------------------------------

def _trainer(network, p_uncond=0.0, p_uncond_class=None, cls=DiffusionTrainer, **kw):
    sched = diffusion_scheduler("ddpm", num_train_timesteps=20)
    return cls(device="cpu", max_epochs=1, train_data_loader=[], network=network,
               optimizer=torch.optim.SGD(network.parameters(), lr=1e-2), scheduler=sched, p_uncond=p_uncond,
               p_uncond_class=p_uncond_class, **kw)


def test_class_dropout_rate_is_the_one_asked_and_independent_of_the_mask():
    trainer = _trainer(tiny_unet(), p_uncond=0.5, p_uncond_class=0.3)
    classes = torch.randint(0, 3, (20000,))
    torch.manual_seed(0)
    got = trainer.class_labels({"class_id": classes}, torch.device("cpu"))
    dropped = got == OCT_PATHOLOGY.null_id
    assert abs(dropped.float().mean().item() - 0.3) < 0.015
    assert torch.equal(got[~dropped], classes[~dropped])  # the others keep their class
    torch.manual_seed(0)
    assert torch.equal(trainer.class_labels({"class_id": classes}, torch.device("cpu")), got)  # seeded
    assert _trainer(tiny_unet(), p_uncond=0.2).p_uncond_class == 0.2  # default: the mask's rate
    with pytest.raises(ValueError, match="p_uncond_class must be in"):
        _trainer(tiny_unet(), p_uncond_class=1.5)


def _make_class_matter(net):
    """Make a tiny UNet's output depend on its inputs and class (MONAI zero-initialises the output convolution and
    each residual block's last one, so an untrained UNet, or one trained a few steps, hardly sees the class)."""
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().max() < 1e-2:
                p.normal_(0, 0.1)
        net.class_embedding.weight.normal_(0, 3.0)
    return net


def _codec():
    """A frozen (untrained) autoencoder with f = 4: 32x32 images <-> 4 x 8x8 latents."""
    torch.manual_seed(0)
    return LatentCodec(autoencoder_kl(1, [8, 16, 16], 4, 1), scale_factor=1.0, compression=4)


@pytest.mark.parametrize("latent", [False, True])
def test_training_steps_feed_the_classes(latent):
    """Pixel and latent trainer (one implementation: the latent one encodes, then runs the pixel step), with and
    without a mask condition: the network receives the batch's classes."""
    net = conditional_diffusion_unet(4 if latent else 1, 0 if latent else 2, channels=(8, 16), num_res_blocks=1,
                                     num_class_embeds=K)
    seen = []
    net.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["class_labels"].clone()), with_kwargs=True)
    kw = dict(latent=_codec(), cls=LatentDiffusionTrainer) if latent else dict(condition_channels=2)
    trainer = _trainer(net, p_uncond=0.0, **kw)
    batch = {"image": torch.rand(3, 1, 32, 32) * 2 - 1, "class_id": torch.tensor([0, 2, 1])}
    if not latent:
        batch["cond"] = torch.rand(3, 2, 32, 32)
    for _ in range(2):
        out = trainer._iteration(trainer, batch)
        assert torch.isfinite(out["loss"]) and out["image"].shape[1] == (4 if latent else 1)
    assert [s.tolist() for s in seen] == [[0, 2, 1]] * 2
    with pytest.raises(ValueError, match="batch has no 'class_id'"):
        trainer._iteration(trainer, {"image": batch["image"]})
    with pytest.raises(ValueError, match=r"class id\(s\) \[3\] outside"):
        trainer._iteration(trainer, {**batch, "class_id": torch.tensor([0, 3, 1])})
    if latent:  # the latent sampler hands the classes on: different classes, different decoded images
        _make_class_matter(net)
        sampler = LatentSampler(DiffusionSampler(diffusion_scheduler("ddim", num_train_timesteps=20), 2), trainer.latent)
        x = sampler(net, sample_generators([5, 5]), (1, 32, 32), None, "cpu", class_labels=[0, 2])
        assert x.shape == (2, 1, 32, 32) and not torch.allclose(x[0], x[1], atol=1e-4)


def test_stage_chains_keep_the_class_id(phantom_dir):
    from monai_oct.recipes.diffusion_pipelines import finetune_transforms, pretrain_transforms

    item = {**load_datalist(phantom_dir / "datalist.json", key="train")[0], "class_id": 2}
    assert pretrain_transforms([32, 32])(item)["class_id"] == 2
    assert pretrain_transforms([32, 32])({"image": item["image"], "class_id": 1})["class_id"] == 1  # no label
    assert finetune_transforms([32, 32], 10, "onehot")(item)["class_id"] == 2
    assert "class_id" not in pretrain_transforms([32, 32])({"image": item["image"]})


def test_network_without_classes_trains_exactly_as_before():
    """num_class_embeds None: the network has no class embedding and a batch's class ids change nothing."""
    losses = []
    for extra in ({}, {"class_id": torch.tensor([0, 1])}):
        net = tiny_unet(num_class_embeds=None)
        assert getattr(net, "class_embedding", None) is None
        trainer = _trainer(net)
        torch.manual_seed(0)
        losses.append(trainer._iteration(trainer, {"image": torch.zeros(2, 1, 32, 32), **extra})["loss"])
    assert torch.equal(losses[0], losses[1])


def test_bundle_configs_without_classes_build_no_class_embedding(tmp_path):
    for stage in ("pretrain", "synthesize"):
        parser = ConfigParser()
        parser.read_config([str(OCT_DDPM_BUNDLE / "configs" / f) for f in stage_configs(stage)])
        parser.update({"channels": [8, 16], "num_res_blocks": 1, "device": "cpu"})
        assert parser.get_parsed_content("num_class_embeds") is None
        net = parser.get_parsed_content("network_def")
        assert net.num_class_embeds is None and getattr(net, "class_embedding", None) is None
    old = tmp_path / "model.pt"
    save_checkpoint(tiny_unet(num_class_embeds=None).state_dict(), old)
    assert trained_class_embeds(old) is None
    assert synthesis_classes(OCT_PATHOLOGY, None, None, 4, old) is None  # no class asked: synthesis as before


def test_checkpoint_without_classes_refuses_a_class(tmp_path):
    old = tmp_path / "model.pt"
    save_checkpoint(tiny_unet(num_class_embeds=None).state_dict(), old)
    with pytest.raises(ValueError, match=rf"{old}: trained without classes .*--class_name DME.*train_classes\.yaml"):
        synthesis_classes(OCT_PATHOLOGY, "DME", None, 4, old)
    other = tmp_path / "other.pt"
    save_checkpoint(tiny_unet(num_class_embeds=3).state_dict(), other)
    with pytest.raises(ValueError, match="trained with 3 class embeddings.*needs 4"):
        synthesis_classes(OCT_PATHOLOGY, "DME", None, 4, other)
    renamed = tmp_path / "renamed" / "model.pt"
    save_checkpoint(tiny_unet().state_dict(), renamed)
    assert synthesis_classes(OCT_PATHOLOGY, "DME", None, 2, renamed) == [1, 1]
    write_model_info(renamed, {"classes": ["healthy", "AMD", "MS"]})
    with pytest.raises(ValueError, match=r"trained on the classes \['healthy', 'AMD', 'MS'\].*ids would mean other"):
        synthesis_classes(OCT_PATHOLOGY, "DME", None, 2, renamed)
    with pytest.raises(ValueError, match="no class embeddings"):
        DiffusionSampler(diffusion_scheduler("ddim", num_train_timesteps=20), 2)(
            tiny_unet(num_class_embeds=None), sample_generators([1]), (1, 32, 32), class_labels=[1])


# ---- sampling ---------------------------------------------------------------------------------------------------

def _sample(net, classes, scale=None, condition=None, guidance_on="all", seed=0, n=None):
    s = DiffusionSampler(diffusion_scheduler("ddim", num_train_timesteps=20), 3, guidance_scale=scale,
                         guidance_on=guidance_on)
    return s(net.eval(), sample_generators([seed] * (n or len(classes))), (1, 32, 32), condition, "cpu", class_labels=classes)


def _trained_unet(condition_channels=0):
    return _make_class_matter(tiny_unet(condition_channels=condition_channels))


def test_guidance_scale_one_is_plain_conditional_and_zero_is_the_null_class():
    net = _trained_unet()
    plain = _sample(net, [0, 1, 2])
    assert torch.allclose(_sample(net, [0, 1, 2], scale=1.0), plain)
    null = _sample(net, [3, 3, 3])
    assert not torch.allclose(null, plain, atol=1e-3)  # the class matters to this network
    assert torch.allclose(_sample(net, [0, 1, 2], scale=0.0), null, atol=1e-5)
    assert torch.allclose(_sample(net, None, n=3), null)  # no class given: the null class
    guided = _sample(net, [0, 1, 2], scale=3.0)
    assert not torch.allclose(guided, plain, atol=1e-3)


def test_guidance_on_the_class_only_keeps_the_mask():
    net = _trained_unet(condition_channels=2)
    cond = torch.rand(2, 2, 32, 32)
    null_class_same_mask = _sample(net, [3, 3], condition=cond)
    assert torch.allclose(_sample(net, [0, 1], 0.0, cond, "class"), null_class_same_mask, atol=1e-5)
    null_all = _sample(net, [3, 3], condition=torch.zeros_like(cond))
    assert torch.allclose(_sample(net, [0, 1], 0.0, cond, "all"), null_all, atol=1e-5)
    with pytest.raises(ValueError, match="guidance_on must be one of"):
        _sample(net, [0, 1], 2.0, cond, "mask")


def test_different_classes_give_different_samples_from_the_same_seed():
    net = _trained_unet()
    x = _sample(net, [0, 1, 2], scale=2.0)
    assert not torch.allclose(x[0], x[1], atol=1e-3) and not torch.allclose(x[1], x[2], atol=1e-3)
    assert torch.equal(_sample(net, [1], scale=2.0)[0], x[1])  # a sample does not depend on its batch


class _RecordingSampler(DiffusionSampler):
    """A sampler that keeps the condition and classes it was called with."""

    seen: list

    def __call__(self, network, generators, shape, condition=None, device=None, **kw):
        self.seen = [*getattr(self, "seen", []), (condition, kw.get("class_labels"))]
        return super().__call__(network, generators, shape, condition, device, **kw)


def test_class_only_synthesis_gives_a_stage1_model_the_condition_it_trained_on(tmp_path):
    """A class model trained without masks (stage 1: the trainer's condition of a batch without one) sampled class
    only gets exactly that condition, with its classes; the set is images only, and label maps are refused."""
    net = _trained_unet(condition_channels=2)
    images = torch.rand(3, 1, 32, 32)
    trained_on = _trainer(net, condition_channels=2)._condition({"image": images}, images)  # a pretrain batch
    sampler = _RecordingSampler(diffusion_scheduler("ddim", num_train_timesteps=20), 2, guidance_scale=2.0)
    source = build_label_source([32, 32], 10, mask_condition=False, condition_channels=2)
    engine = SamplerEngine(3, source, net, sampler, [32, 32], 10, set_writer(tmp_path, labels=False), batch_size=3,
                           progress=False, class_table=OCT_PATHOLOGY, class_ids=[2, 0, 1])
    engine.run_all()
    (cond, classes), = sampler.seen
    assert torch.equal(cond, trained_on) and classes == [2, 0, 1]
    listed = load_datalist(tmp_path / "datalist.json", key="training")
    assert [sorted(it) for it in listed] == [["class", "image"]] * 3
    assert [it["class"] for it in listed] == ["MS", "healthy", "DME"]
    assert not (tmp_path / "labels").exists() and (tmp_path / "grid.png").is_file()
    assert SamplerEngine(3, source, net, sampler, [32, 32], 10, set_writer(tmp_path, labels=False),
                         progress=False, class_table=OCT_PATHOLOGY, class_ids=[2, 0, 1]).pending() == []  # resumable
    with pytest.raises(ValueError, match="takes no label maps, got --label_datalist labels.json"):
        build_label_source([32, 32], 10, label_datalist="labels.json", mask_condition=False, condition_channels=2)


# ---- the configs pair on the phantom --------------------------------------------------------------------------

TINY = dict(image_size=[32, 32], channels=[8, 16], num_res_blocks=1, num_train_timesteps=20, batch_size=4,
            device="cpu", progress=False, sample_steps=2, num_sample_images=2, num_threads=1)


@pytest.mark.slow
def test_train_classes_and_synthesize_classes_on_the_phantom(phantom_dir, tmp_path):
    names = ["healthy", "DME", "MS"]
    datalist = _classes_datalist(phantom_dir, tmp_path / "classes.json")
    model = tmp_path / "pre"
    run_stage("train_classes", dataset_dir=phantom_dir, datalist=str(datalist), output_dir=model, max_epochs=1,
              sample_interval=1, **TINY)
    assert trained_class_embeds(model / "model.pt") == 4
    assert json.loads((model / "model.json").read_text())["classes"] == names
    assert json.loads((model / "model.json").read_text())["mask_condition"] is False  # stage 1: the zero condition
    out = tmp_path / "synth"  # class only, as the model was trained (its model.json): no label maps, images only
    run_stage("synthesize_classes", dataset_dir=phantom_dir, image_ckpt=model / "model.pt", output_dir=out,
              class_samples={"MS": 2, "healthy": 1}, num_inference_steps=2, sampler="ddim", guidance_scale=2.0, **TINY)
    listed = load_datalist(out / "datalist.json", key="training")
    assert [it["class"] for it in listed] == ["MS", "MS", "healthy"] and all("label" not in it for it in listed)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == ["MS", "MS", "healthy"] and manifest["generation"]["guidance_scale"] == 2.0
    assert manifest["generation"]["config"]["classes"]["class_samples"] == {"MS": 2, "healthy": 1}
    assert manifest["generation"]["config"]["classes"]["mask_condition"] is False
    assert len(list(Path(out / "images").iterdir())) == 3 and not (out / "labels").exists()
    out = tmp_path / "synth_masks"  # --mask_condition true (a finetune_classes model's way): label maps, pairs
    run_stage("synthesize_classes", dataset_dir=phantom_dir, image_ckpt=model / "model.pt", output_dir=out,
              label_datalist=str(datalist), mask_condition=True, class_samples={"DME": 2}, num_inference_steps=2,
              sampler="ddim", **TINY)
    listed = load_datalist(out / "datalist.json", key="training")
    assert [it["class"] for it in listed] == ["DME", "DME"] and all(Path(it["label"]).is_file() for it in listed)


def _classes_datalist(phantom_dir, path):
    items = load_datalist(phantom_dir / "datalist.json", key="train")
    write_datalist(path, [{**it, "class": OCT_PATHOLOGY.names[i % 3]} for i, it in enumerate(items)], key="train")
    return path


@pytest.mark.parametrize("stage", ["train_classes", "finetune_classes"])
def test_class_stages_have_the_bundle_properties(stage, phantom_dir, tmp_path):
    """Both training stages parse (MONAI's train properties), build a UNet with len(table) + 1 class embeddings and
    items with their class ids; an item without a class stops the run naming its file."""
    from monai.bundle import ConfigWorkflow

    kw = dict(dataset_dir=str(phantom_dir), output_dir=str(tmp_path / "o"), device="cpu", image_size=[32, 32],
              channels=[8, 16], pretrained_ckpt=None, logging_file=False)
    files = [str(OCT_DDPM_BUNDLE / "configs" / c) for c in stage_configs(stage)]
    w = ConfigWorkflow(config_file=files, workflow_type="train", datalist=str(_classes_datalist(phantom_dir, tmp_path / "c.json")), **kw)
    w.initialize()
    assert w.check_properties() == []
    assert w.trainer.null_class == 3 and w.parser.get_parsed_content("network").num_class_embeds == 4
    assert [it["class_id"] for it in w.parser.get_parsed_content("train#items")][:3] == [0, 1, 2]
    w = ConfigWorkflow(config_file=files, workflow_type="train", **kw)  # the phantom's own datalist: no classes
    w.initialize()
    with pytest.raises(RuntimeError) as e:  # MONAI's "Failed to evaluate", caused by ours
        w.parser.get_parsed_content("train#items")
    assert isinstance(e.value.__cause__, DataError)
    assert re.search(r"phantom_\w+\.png: no class for this item", str(e.value.__cause__))
