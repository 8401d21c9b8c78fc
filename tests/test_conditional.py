"""Class-conditional diffusion with classifier-free guidance (issue 28; beyond the paper, opt-in).

Tiny UNets and T=10 throughout. The guidance rule is checked against two separate network passes computed here
(the closed form of Ho & Salimans eq. 6), not against the wrapper's own arithmetic.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DDP_ENV, run_python, tiny_overrides
from sampling_helpers import sample_cfg, tiny_checkpoint

from ddpm.core.config import SamplerConfig, compose
from ddpm.core.diffusion import SAMPLERS, GaussianDiffusion
from ddpm.core.diffusion.guidance import guided, with_labels
from ddpm.core.nets import UNet
from ddpm.services.generate import class_labels, generate, seeds_for

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
K = 3


def tiny_unet(num_classes=None, out_channels=1, seed=0, as_built=False) -> UNet:
    torch.manual_seed(seed)
    # ch=64: GroupNorm groups of 2 channels. With one channel per group (ch < 64 here) the norm after the
    # embedding is added removes any per-channel constant, so neither t nor the class would reach the output.
    net = UNet(1, out_channels, ch=64, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), dropout=0.0,
               resolution=8, num_classes=num_classes)
    if as_built:
        return net
    with torch.no_grad():  # the residual branches and conv_out start near zero: perturb them so that labels show
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


def diffusion(var_type="fixed_large") -> GaussianDiffusion:
    loss = "hybrid" if var_type.startswith("learned") else "mse"
    return GaussianDiffusion.from_config(schedule="linear", num_timesteps=10, mean_type="eps", var_type=var_type,
                                         loss_type=loss)


def sampler(name: str, clip: bool = True) -> SamplerConfig:
    spec = SAMPLERS[name]
    params = {"restart_t_min": 2, "restart_t_max": 6} if name == "restart" else {}
    return SamplerConfig(name=name, steps=None if spec.full_chain else 5, params=params, clip_denoised=clip)


# ------------------------------------------------------------------------------------------------ the network
def test_num_classes_null_is_the_unconditional_network():
    a, b = tiny_unet(None, as_built=True), tiny_unet(K, as_built=True)
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sb) - set(sa) == {"class_emb.weight"} and sb["class_emb.weight"].shape == (K + 1, 256)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # the class embedding is built last: same init otherwise
    assert "num_classes" not in a.config() and b.config()["num_classes"] == K
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 7])
    with pytest.raises(ValueError, match="unconditional"):
        a(x, t, torch.tensor([0, 1]))


def test_changing_a_label_changes_the_output_and_none_is_the_null_token():
    net = tiny_unet(K)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 7])
    with torch.no_grad():
        out0, out1 = net(x, t, torch.tensor([0, 0])), net(x, t, torch.tensor([1, 1]))
        null = net(x, t, torch.tensor([K, K]))
        assert (out0 - out1).abs().max() > 1e-3
        assert torch.equal(net(x, t), null)


# ------------------------------------------------------------------------------------------------ guidance
def test_guidance_is_ho_salimans_in_one_batched_pass():
    net = tiny_unet(K)
    calls = []

    def counted(x, t, y):
        calls.append(x.shape[0])
        return net(x, t, y)

    x, t, y, w = torch.randn(3, 1, 8, 8), torch.tensor([1, 5, 9]), torch.tensor([0, 2, 1]), 2.5
    with torch.no_grad():
        out = guided(counted, y, w, K)(x, t)
        cond, uncond = net(x, t, y), net(x, t, torch.full_like(y, K))
    assert calls == [6]  # one forward of 2N images
    torch.testing.assert_close(out, (1 + w) * cond - w * uncond, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, uncond + (1 + w) * (cond - uncond), rtol=1e-5, atol=1e-5)  # diffusers' 1 + w


def test_learned_variance_guides_the_mean_channels_only():
    net = tiny_unet(K, out_channels=2)
    x, t, y, w = torch.randn(2, 1, 8, 8), torch.tensor([2, 8]), torch.tensor([1, 0]), 3.0
    with torch.no_grad():
        out = guided(net, y, w, K, mean_channels=1)(x, t)
        cond, uncond = net(x, t, y), net(x, t, torch.full_like(y, K))
    torch.testing.assert_close(out[:, :1], 4.0 * cond[:, :1] - 3.0 * uncond[:, :1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[:, 1:], cond[:, 1:], rtol=1e-5, atol=1e-5)  # GLIDE: the conditional variance
    assert (cond[:, 1:] - uncond[:, 1:]).abs().max() > 1e-4  # (so the test could fail)


def test_negative_or_nan_guidance_is_refused():
    for w in (-0.5, float("nan")):
        with pytest.raises(ValueError, match="guidance_scale"):
            guided(tiny_unet(K), torch.tensor([0]), w, K)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_w0_is_conditional_sampling_bit_for_bit(name):
    net, diff, seeds = tiny_unet(K), diffusion(), [11, 12, 13]
    y = torch.tensor([2, 0, 1])
    s = sampler(name)
    plain = generate(lambda x, t: net(x, t, y), diff, seeds, (1, 8, 8), s)
    w0 = generate(net, diff, seeds, (1, 8, 8), s, labels=y, guidance_scale=0.0, num_classes=K)
    assert torch.equal(plain, w0)
    s = sampler(name, clip=False)  # (no clamp: a pixel at its edge would amplify float rounding)
    w2 = generate(net, diff, seeds, (1, 8, 8), s, labels=y, guidance_scale=2.0, num_classes=K)
    expect = generate(lambda x, t: 3.0 * net(x, t, y) - 2.0 * net(x, t, torch.full_like(y, K)), diff, seeds,
                      (1, 8, 8), s)
    assert (w2 - plain).abs().max() > 1e-4
    torch.testing.assert_close(w2, expect, rtol=2e-3, atol=1e-3)  # batched vs separate passes: float rounding


def test_with_labels_checks_the_batch():
    with pytest.raises(ValueError, match="labels for a batch"):
        with_labels(tiny_unet(K), torch.tensor([0, 1]))(torch.zeros(3, 1, 8, 8), torch.zeros(3, dtype=torch.long))


# ------------------------------------------------------------------------------------------------ labels
def test_label_specs_depend_on_seed_and_index_only():
    assert class_labels("balanced", 0, 0, 12, 10).tolist() == [*range(10), 0, 1]
    assert class_labels(None, 0, 5, 8, 4).tolist() == [1, 2, 3]
    assert class_labels(3, 0, 0, 4, 10).tolist() == [3, 3, 3, 3]
    assert class_labels([4, 7], 0, 1, 5, 10).tolist() == [7, 4, 7, 4]
    r = class_labels("random", 5, 0, 200, 10)
    assert torch.equal(r[50:80], class_labels("random", 5, 50, 80, 10))  # any slice: the same labels
    assert not torch.equal(r, class_labels("random", 6, 0, 200, 10))
    assert set(r.tolist()) == set(range(10)) and r.dtype == torch.int64


def test_digits_labels_are_sklearns_targets_and_travel_with_their_images():
    from sklearn.datasets import load_digits

    from ddpm.core.data import DigitsDataModule, EpochSampler

    dm = DigitsDataModule(batch_size=8)
    dm.with_labels = True
    dm.setup("fit")
    assert dm.class_names() == [str(i) for i in range(10)]
    raw = load_digits()
    target_of = {np.rint(im * 255 / 16).astype(np.uint8).tobytes(): t for im, t in zip(raw.images, raw.target)}
    for rank in (0, 1):  # each rank of a 2-process run, a shuffled epoch
        for i in list(EpochSampler(dm.train_dataset, seed=3, num_replicas=2, rank=rank))[:20]:
            x, y = dm.train_dataset[i]
            key = ((x + 1) * 127.5).round().to(torch.uint8)[0].numpy().tobytes()
            assert target_of[key] == int(y)


def test_image_folder_classes_are_the_sorted_subfolders(tmp_path):
    from PIL import Image

    from ddpm.core.data import ImageFolderDataModule

    for cls, n in (("zebra", 3), ("ant", 4)):
        (tmp_path / "cls" / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (40 * i, 200 if cls == "ant" else 0, 0)).save(tmp_path / "cls" / cls / f"{i}.png")
    dm = ImageFolderDataModule(root=str(tmp_path / "cls"), resolution=8, val_fraction=0.2, test_fraction=0.2,
                               batch_size=2, num_workers=0)
    assert dm.class_names() == ["ant", "zebra"]
    dm.with_labels = True
    dm.setup("fit")
    for i in range(len(dm.train_dataset)):
        x, y = dm.train_dataset[i]
        is_ant = bool(x[1].mean() > 0)  # green channel 200 only in ant/
        assert int(y) == (0 if is_ant else 1)
    (tmp_path / "flat").mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8)).save(tmp_path / "flat" / f"{i}.png")
    assert ImageFolderDataModule(root=str(tmp_path / "flat"), resolution=8).class_names() is None
    off = ImageFolderDataModule(root=str(tmp_path / "cls"), resolution=8, class_folders=False)
    assert off.class_names() is None


# ------------------------------------------------------------------------------------------------ training
def _module(cond_drop_prob: float):
    from ddpm.core.module import DiffusionModule

    model = {"_target_": "ddpm.core.nets.UNet", "ch": 64, "ch_mult": [1], "num_res_blocks": 1, "attn_resolutions": [],
             "dropout": 0.0, "num_classes": 10}
    objective = {"mean_type": "eps", "var_type": "fixed_large", "loss_type": "mse", "cond_drop_prob": cond_drop_prob}
    optim = {"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0, "warmup_steps": 0,
             "ema_decay": 0.9, "fused": False, "t_sampler": "uniform"}
    return DiffusionModule(model, {"schedule": "linear", "num_timesteps": 10}, objective, optim, (1, 8, 8), seed=0,
                           nan_policy="stop", nan_max_consecutive=1)


def test_class_scores_of_few_images_per_class_are_exact_and_quiet():
    """A class with fewer images than the 64 feature dimensions (a short conditional run's 16 final samples) has a
    singular covariance: its FID is the exact low-rank closed form, without scipy's "Matrix is singular" warning on
    the console."""
    import warnings

    from ddpm.services.metrics.classmix import weighted_stats
    from ddpm.services.metrics.conditional import class_scores
    from ddpm.services.metrics.digits_classifier import DigitsExtractor
    from ddpm.services.metrics.digits_score import digits_split
    from ddpm.services.metrics.features import extract_all

    x, y = digits_split("test")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails
        out = class_scores(x[:16], y[:16].numpy())
    feats = np.asarray(extract_all(x[:16], DigitsExtractor(), device="cpu")[0], np.float64)
    ref_x, ref_y = digits_split("train")
    ref = np.asarray(extract_all(ref_x, DigitsExtractor(), device="cpu")[0], np.float64)
    c = int(np.bincount(y[:16].numpy()).argmax())  # a class with several (< 64) images
    mine, theirs = feats[y[:16].numpy() == c], ref[ref_y.numpy() == c]
    # the d x d eigen-route (no sqrtm): tr sqrt(sigma1 sigma2) = sum sqrt(eig(sigma1 sigma2))
    (m1, s1), (m2, s2) = weighted_stats(mine, np.ones(len(mine))), weighted_stats(theirs, np.ones(len(theirs)))
    tr = np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)).sum()
    want = float((m1 - m2) @ (m1 - m2) + np.trace(s1) + np.trace(s2) - 2 * tr)
    assert (y[:16] == c).sum() >= 3 and out[f"fid_class_{c}"] == pytest.approx(want, rel=1e-4)


def test_condition_is_sample_pys_labels_and_nothing_for_an_unconditional_model():
    """``condition``: what every caller of ``generate`` passes so that a conditional model is sampled as
    ``sample.py`` samples it (balanced labels by default), not through its null token."""
    from ddpm.services.generate import condition

    assert condition(None, 0, 5) == {} and condition(0, 0, 5) == {}
    c = condition(10, 8, 13)
    assert c["labels"].tolist() == [8, 9, 0, 1, 2] and c["guidance_scale"] == 0.0 and c["num_classes"] == 10
    r = condition(4, 0, 6, "random", seed=3, guidance_scale=0.5)
    assert r["labels"].tolist() == class_labels("random", 3, 0, 6, 4).tolist() and r["guidance_scale"] == 0.5


def _random_conditional_module():
    """A conditional module whose output depends on the labels (a trained-for-seconds one's hardly does: the
    output convolution starts at zero)."""
    module = _module(0.1).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.ema.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / max(1, p[0].numel()) ** 0.5)
    return module


def test_a_conditional_runs_sample_grids_are_balanced_label_samples(tmp_path):
    """The periodic grids of a class-conditional run (the quickstart) show what sample.py would draw: image i of
    class i mod K at w=0. Before, they were the null token's (unconditional) samples."""
    from types import SimpleNamespace

    from PIL import Image

    from ddpm.core.data import model_to_uint8
    from ddpm.core.io import make_grid_uint8
    from ddpm.services.callbacks.sample_grid import SampleGrid

    module = _random_conditional_module()
    s = sampler("ddim")
    cb = SampleGrid(every_n_steps=1, num_images=10, seed=4, sampler=s, use_ema=True, upscale=1)
    path = cb.write_grid(SimpleNamespace(default_root_dir=str(tmp_path), loggers=[], global_step=0), module, "g")
    grid = torch.from_numpy(np.asarray(Image.open(path).convert("L")).copy())[..., None]  # [H, W, 1]
    seeds = seeds_for(4, 0, 10)
    with torch.no_grad():
        want = generate(module.model_fn(use_ema=True), module.diffusion, seeds, (1, 8, 8), s,
                        labels=torch.arange(10), num_classes=10)
        null = generate(module.model_fn(use_ema=True), module.diffusion, seeds, (1, 8, 8), s)
    assert torch.equal(grid, make_grid_uint8(model_to_uint8(want)))
    assert not torch.equal(grid, make_grid_uint8(model_to_uint8(null)))  # not the null token's samples


@pytest.mark.parametrize("p", [1.0, 0.0])
def test_cond_drop_prob_one_makes_the_labels_irrelevant(p):
    module = _module(p)
    with torch.no_grad():  # away from the near-zero init of the residual branches, where labels cannot show
        for q in module.net.parameters():
            q.add_(0.05 * torch.randn_like(q))
    torch.manual_seed(1)
    x = torch.rand(16, 1, 8, 8) * 2 - 1
    ya, yb = torch.arange(16) % 10, (torch.arange(16) + 3) % 10
    losses = []
    for y in (ya, yb):
        module.on_train_batch_start(None, 0)
        losses.append(module.training_step([x, y], 0))
    assert torch.equal(losses[0], losses[1]) == (p == 1.0)


def test_label_dropout_rate_and_seed_address():
    module = _module(0.1)
    y = torch.zeros(20000, dtype=torch.long)
    dropped = module.drop_labels(y, 0)
    assert set(dropped.unique().tolist()) == {0, 10}
    assert abs(float((dropped == 10).float().mean()) - 0.1) < 0.01  # binomial sd 0.002
    assert torch.equal(dropped, module.drop_labels(y, 0)) and not torch.equal(dropped, module.drop_labels(y, 1))


@pytest.mark.parametrize("objective", ["simple", *(pytest.param(o, marks=pytest.mark.slow) for o in (
    "hybrid", "eps_vlb_fixed", "eps_vlb_learned", "mu_vlb_fixed", "mu_vlb_learned", "mu_mse"))])
def test_every_objective_trains_conditionally_with_ema(tmp_path, tiny, objective):
    from ddpm.commands.training import train

    # ch=64, one level: GroupNorm groups of 2 channels, so the class embedding gets a gradient (see tiny_unet)
    cfg = tiny(f"objective={objective}", "model.num_classes=10", "final_samples=10", "model.ch=64", "model.ch_mult=[1]",
               "model.attn_resolutions=[]")  # the recipe's final sampler: fixed_small, also for a learned variance
    metrics, objs = train(cfg)
    module = objs["module"]
    assert module.net.class_emb is not None and int(module.ema_num_updates) == 4
    init = tiny_unet(10).class_emb.weight  # (not the same seed: only the shape and that training moved it)
    assert init.shape[0] == module.net.class_emb.weight.shape[0] == 11
    moved = (module.ema.class_emb.weight - module.net.class_emb.weight).abs().amax(dim=1)
    assert (moved[:10] > 0).all()  # every class row trained, and the EMA lags behind the raw weights
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["class_names"] == [str(i) for i in range(10)]
    assert "digits/class_accuracy" in metrics and np.isfinite(metrics["digits/fid"])
    from PIL import Image

    with Image.open(tmp_path / "run" / "samples.png") as grid:  # one row per class: 10 rows of 1 image (8x8, x8)
        assert grid.size == (1 * 66 + 2, 10 * 66 + 2)


@pytest.mark.slow  # a tiny run, then sample.py: over 2 s on 2 cores
def test_final_samples_are_sample_pys_balanced_draw_and_the_grid_rows_are_classes(tmp_path, tiny):
    """The training's final samples of a conditional model (the quickstart's metrics.json figures) are what
    ``sample.py`` draws with the run's seed and sampler: image i of class i mod K. Before, classes came in blocks
    (image i: class i // per_class mod K), so 256 samples held 31 zeros and 25 of each other class."""
    from PIL import Image

    from ddpm.commands.sampling import sample
    from ddpm.commands.training import train
    from ddpm.core.io import make_grid_uint8

    cfg = tiny("model.num_classes=10", "final_samples=23", "model.ch=64", "model.ch_mult=[1]",
               "model.attn_resolutions=[]")
    train(cfg)
    run = tmp_path / "run"
    sample(sample_cfg(run / "checkpoints" / "last.ckpt", tmp_path / "s", "num_samples=23", f"seed={cfg.seed}",
                      "sampler=respaced", f"sampler.steps={cfg.sampler.steps}", "sampler.var_type=fixed_small"))
    z = _npz(tmp_path / "s" / "samples.npz")
    assert z["arr_1"].tolist() == [i % 10 for i in range(23)]
    images = torch.from_numpy(z["arr_0"][..., :1]).permute(0, 3, 1, 2)
    rows = torch.tensor([c + 10 * j for c in range(10) for j in range(2)])  # 2 per class: images c and c + 10
    want = make_grid_uint8(images[rows], nrow=2, upscale=8)
    with Image.open(run / "samples.png") as im:
        grid = torch.from_numpy(np.asarray(im.convert("L")).copy())[..., None]
    assert torch.equal(grid, want)


@pytest.mark.slow  # a 2-process gloo run
def test_ddp_keeps_each_label_with_its_image_and_the_ranks_in_step(tmp_path):
    """2 gloo processes, a conditional model: on every rank and step each image arrives with its own sklearn
    target, the null-token dropout only ever replaces a label by K, the ranks train on different images, and both
    end with the same weights, EMA and EMA count."""
    from sklearn.datasets import load_digits

    run = tmp_path / "run"
    args = [str(ROOT / "train.py"), *tiny_overrides(run, steps=3, batch=16), "final_samples=0", "model.num_classes=10",
            "trainer=ddp", "trainer.devices=2", f"hydra.run.dir={run}",
            "+callbacks.rank_info._target_=fault_callbacks.RankInfo",
            "+callbacks.labels._target_=fault_callbacks.LabelLog"]
    proc = run_python(args, tmp_path, 300, merge=True, **DDP_ENV)
    assert proc.returncode == 0, proc.stdout[-3000:]
    raw = load_digits()
    target_of = {np.rint(im * 255 / 16).astype(np.uint8).tobytes().hex(): int(t)
                 for im, t in zip(raw.images, raw.target)}
    logs = {r: [json.loads(line) for line in (run / f"labels_rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)}
    dropped = 0
    for lines in logs.values():
        assert [line["step"] for line in lines] == [0, 1, 2]
        for line in lines:
            assert len(line["images"]) == 8  # the global batch of 16 over 2 ranks
            assert [target_of[h] for h in line["images"]] == line["labels"]
            assert all(t in (y, 10) for t, y in zip(line["trained"], line["labels"]))
            dropped += sum(t == 10 for t in line["trained"])
    assert dropped < 48 // 2  # cond_drop_prob 0.1 of 48 labels
    for step in range(3):
        assert not set(logs[0][step]["images"]) & set(logs[1][step]["images"])
    assert (run / "weights_sha_rank0.txt").read_text() == (run / "weights_sha_rank1.txt").read_text()


@pytest.mark.slow  # three tiny runs
def test_a_conditional_run_resumes_bit_for_bit(tmp_path, tiny):
    """4 steps straight == 2 steps, stop, ckpt_path=last, 2 more (mid-epoch): the labels, their dropout coins and
    the class embedding continue where they stopped."""
    from ddpm.commands.training import train

    common = ["model.num_classes=10", "objective.cond_drop_prob=0.5", "trainer.val_check_interval=2",
              "trainer.deterministic=true", "callbacks.model_checkpoint.every_n_train_steps=1", "final_samples=0",
              "logger=none", "~callbacks.lr_monitor"]
    train(tiny(*common, output_dir=tmp_path / "straight", steps=4))
    train(tiny(*common, output_dir=tmp_path / "resumed", steps=2))
    train(tiny(*common, "ckpt_path=last", output_dir=tmp_path / "resumed", steps=4))
    a, b = (torch.load(tmp_path / d / "checkpoints" / "last.ckpt", weights_only=True) for d in ("straight", "resumed"))
    assert a["global_step"] == b["global_step"] == 4
    assert "net.class_emb.weight" in a["state_dict"]
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key


# ------------------------------------------------------------------------------------------------ sample.py
@pytest.fixture(scope="module")
def cond_ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory, extra=("model.num_classes=10",))


@pytest.fixture(scope="module")
def uncond_ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory)


def _npz(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.slow  # a tiny checkpoint: over 2 s on 2 cores
def test_one_image_of_one_class_is_written_and_scored_without_a_balanced_fid(cond_ckpt, tmp_path, capsys):
    """labels=3 num_samples=1 sampled, then failed on the balanced FID's covariance of one image (NaN)."""
    from ddpm.commands.sampling import sample

    m = sample(sample_cfg(cond_ckpt, tmp_path / "one", "num_samples=1", "labels=3", "sampler=ddim", "sampler.steps=5"))
    assert _npz(tmp_path / "one" / "samples.npz")["arr_1"].tolist() == [3]
    assert m["digits/class_accuracy"] in (0.0, 1.0) and "digits/fid_balanced" not in m
    assert "balanced FID" not in capsys.readouterr().out
    sample(sample_cfg(cond_ckpt, tmp_path / "four", "num_samples=4", "sampler=ddim", "sampler.steps=5"))
    assert "(n=4 < 64 features: not comparable)" in capsys.readouterr().out  # a figure, said for what it is


@pytest.mark.slow  # two tiny checkpoints' bounds: over 2 s on 2 cores
def test_the_nll_of_a_conditional_model_says_it_is_the_null_tokens(cond_ckpt, uncond_ckpt, tmp_path, capsys):
    """The quickstart is class-conditional: ``python -m ddpm.nll`` gives no labels, so its bound is the null
    token's (comparable with an unconditional model's -log p(x)), and nll.json and the console say so."""
    from ddpm.commands.nll import NULL_TOKEN, evaluate_nll, nll_of_images
    from ddpm.core.data import DigitsDataModule, uint8_to_model
    from ddpm.services.loading import load_model

    def cfg(ckpt, out):
        return compose("nll", [f"ckpt_path={ckpt}", f"out_dir={out}", "progress=false", "trainer.accelerator=cpu",
                               "max_images=3", "batch_size=3", "seed=1"])

    cond = evaluate_nll(cfg(cond_ckpt, tmp_path / "c"))
    assert cond["conditioning"] == NULL_TOKEN and NULL_TOKEN in capsys.readouterr().out
    assert "conditioning" not in evaluate_nll(cfg(uncond_ckpt, tmp_path / "u"))
    assert NULL_TOKEN not in capsys.readouterr().out
    loaded = load_model(cond_ckpt)  # the bound is the no-label network's
    x = torch.stack([uint8_to_model(im) for im in DigitsDataModule().splits()["test"][:3]])
    null = nll_of_images(loaded.model_fn(), loaded.diffusion, x, [0, 1, 2], 1)["total_bpd"].mean()
    assert cond["bpd"] == pytest.approx(float(null), rel=1e-9)


@pytest.mark.slow  # over 2 s on 2 cores: the fast tier stays under 3 minutes
def test_sample_py_balanced_guided_labels_in_the_npz(cond_ckpt, tmp_path):
    from ddpm.commands.sampling import sample

    m = sample(sample_cfg(cond_ckpt, tmp_path / "a", "num_samples=12", "batch_size=5", "shard_size=7",
                          "guidance_scale=1.5", "sampler=ddim", "sampler.steps=5"))
    z = _npz(tmp_path / "a" / "samples.npz")
    assert z["arr_1"].dtype == np.int64 and z["arr_1"].tolist() == [i % 10 for i in range(12)]
    assert z["arr_0"].shape == (12, 8, 8, 3)
    assert m["guidance_scale"] == 1.5 and m["labels"] == "balanced" and m["class_names"][3] == "3"
    assert 0.0 <= m["digits/class_accuracy"] <= 1.0 and np.isfinite(m["digits/fid_balanced"])
    # image i and its label depend on (seed, i) only: another batch and shard size, a random label spec sliced
    sample(sample_cfg(cond_ckpt, tmp_path / "b", "num_samples=12", "batch_size=12", "shard_size=12",
                      "guidance_scale=1.5", "sampler=ddim", "sampler.steps=5"))
    np.testing.assert_array_equal(_npz(tmp_path / "b" / "samples.npz")["arr_0"], z["arr_0"])
    sample(sample_cfg(cond_ckpt, tmp_path / "c", "num_samples=12", "guidance_scale=0", "labels=[4,7]",
                      "sampler=ddim", "sampler.steps=5"))
    assert _npz(tmp_path / "c" / "samples.npz")["arr_1"].tolist() == [4, 7] * 6


def test_unconditional_npz_has_no_labels(uncond_ckpt, tmp_path):
    from ddpm.commands.sampling import sample

    m = sample(sample_cfg(uncond_ckpt, tmp_path, "num_samples=3", "sampler=ddim", "sampler.steps=3"))
    assert list(_npz(tmp_path / "samples.npz")) == ["arr_0"] and "labels" not in m


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(("which", "overrides", "needle"), [
    ("sample", ["labels=10"], "labels=10: class 10 is outside 0..9"),
    ("sample", ["labels=[1,12]"], "class 12 is outside 0..9"),
    ("uncond", ["guidance_scale=2"], "guidance_scale=2: this model is unconditional"),
    ("uncond", ["labels=balanced"], "labels='balanced': this model is unconditional"),
    ("sample", ["guidance_scale=-1"], "guidance_scale=-1 is not valid: expected a number >= 0"),
    ("sample", ["labels=cats"], "labels='cats' is not valid"),
])
def test_bad_sampling_input_one_message_before_any_work(which, overrides, needle, cond_ckpt, uncond_ckpt, tmp_path,
                                                        monkeypatch):
    from ddpm.commands import sampling

    monkeypatch.setattr(sampling, "generate", lambda *a, **k: pytest.fail("sampled before refusing"))
    ckpt = uncond_ckpt if which == "uncond" else cond_ckpt
    with pytest.raises(ValueError) as e:
        sampling.sample(sample_cfg(ckpt, tmp_path, "num_samples=2", *overrides))
    assert needle in str(e.value)
    assert not (tmp_path / "shards").exists()


@pytest.mark.parametrize(("overrides", "needle"), [
    (["model.num_classes=5"], "model.num_classes=5 disagrees with the data (digits), which have 10 classes"),
    (["objective.cond_drop_prob=1.5"], "objective.cond_drop_prob=1.5 is not valid: expected a probability in [0, 1]"),
    (["model.num_classes=0"], "model.num_classes=0 is not valid"),
])
def test_bad_training_input(overrides, needle, tiny, monkeypatch):
    from ddpm.commands import training

    monkeypatch.setattr(training, "build_trainer", lambda *a, **k: pytest.fail("built a trainer before refusing"))
    with pytest.raises(ValueError) as e:
        training.train(tiny(*overrides))
    assert needle in str(e.value)


def test_num_classes_on_an_unlabelled_folder_is_refused(tiny, tmp_path, monkeypatch):
    from PIL import Image

    from ddpm.commands import training

    for i in range(8):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / f"{i}.png")
    monkeypatch.setattr(training, "build_module", lambda *a, **k: pytest.fail("built the model before refusing"))
    cfg = tiny("data=image_folder", f"data.root={tmp_path}", "data.resolution=8", "data.batch_size=2",
               "model.num_classes=3", "data.num_workers=0")
    with pytest.raises(ValueError, match=r"model.num_classes=3: the data \(image_folder_8\) have no class labels"):
        training.train(cfg)


@pytest.mark.slow
def test_the_cli_says_error_in_one_line(tmp_path, uncond_ckpt):
    r = run_python([str(ROOT / "sample.py"), f"ckpt_path={uncond_ckpt}", "guidance_scale=3", f"out_dir={tmp_path}",
                    f"hydra.run.dir={tmp_path}", "trainer.accelerator=cpu"], ROOT, 300, HYDRA_FULL_ERROR="0")
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "guidance_scale=3: this model is unconditional" in errors[0]
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_two_processes_give_the_same_images_and_labels(cond_ckpt, tmp_path):
    from ddpm.commands.sampling import sample

    sample(sample_cfg(cond_ckpt, tmp_path / "one", "num_samples=7", "batch_size=3", "shard_size=2",
                      "labels=random", "guidance_scale=1", "sampler=ddim", "sampler.steps=4"))
    cmd = [str(ROOT / "sample.py"), f"ckpt_path={cond_ckpt}", "num_samples=7", "batch_size=3",
           "shard_size=2", "labels=random", "guidance_scale=1", "sampler=ddim", "sampler.steps=4",
           "trainer.devices=2", "trainer.accelerator=cpu", "progress=false", f"out_dir={tmp_path / 'two'}",
           f"hydra.run.dir={tmp_path / 'two'}"]
    r = run_python(cmd, ROOT, 600, OMP_NUM_THREADS="1")
    assert r.returncode == 0, r.stderr[-3000:]
    one, two = _npz(tmp_path / "one" / "samples.npz"), _npz(tmp_path / "two" / "samples.npz")
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["world_size"] == 2
    np.testing.assert_array_equal(one["arr_0"], two["arr_0"])
    np.testing.assert_array_equal(one["arr_1"], two["arr_1"])
    assert len(set(one["arr_1"].tolist())) > 1


@pytest.mark.slow
def test_frontier_counts_a_guided_step_as_two_evaluations(cond_ckpt, uncond_ckpt, tmp_path):
    from ddpm.commands.frontier import frontier

    base = ["samplers=[ddim]", "steps=[5]", "num_samples=10", "batch_size=10", "seed_sets=1", "num_boot=5",
            "fid.feature_extractor=digits", "progress=false", "device=cpu"]
    guided_run = frontier(compose("frontier", [f"ckpt_path={cond_ckpt}", f"out_dir={tmp_path / 'g'}", *base,
                                               "guidance_scale=2", "labels=[1,2]"]))
    assert [e["network_evaluations"] for e in guided_run["entries"]] == [20, 10]  # full chain T=10, ddim 5
    with np.load(tmp_path / "g" / "entries" / "ddim5" / "set0.npz") as z:  # the same images as sample.py's
        images = z["images"]
    from ddpm.commands.sampling import sample

    sample(sample_cfg(cond_ckpt, tmp_path / "s", "num_samples=10", "guidance_scale=2", "labels=[1,2]",
                      "sampler=ddim", "sampler.steps=5"))
    np.testing.assert_array_equal(images.transpose(0, 2, 3, 1).repeat(3, -1),
                                  _npz(tmp_path / "s" / "samples.npz")["arr_0"])
    plain = frontier(compose("frontier", [f"ckpt_path={cond_ckpt}", f"out_dir={tmp_path / 'p'}", *base]))
    assert [e["network_evaluations"] for e in plain["entries"]] == [10, 5]
    with pytest.raises(ValueError, match="this model is unconditional"):
        frontier(compose("frontier", [f"ckpt_path={uncond_ckpt}", f"out_dir={tmp_path / 'u'}", *base,
                                      "guidance_scale=1"]))


@pytest.mark.slow
def test_figure_classes_rows_are_classes_and_the_sweep_shares_noise(cond_ckpt, tmp_path):
    from ddpm.commands.figures import classes_figure, make_figure
    from ddpm.services.loading import load_model

    loaded = load_model(cond_ckpt)
    fn, diff, shape = loaded.model_fn(), loaded.diffusion, loaded.image_shape
    x = classes_figure(fn, diff, shape, 10, seeds=3, scales=[1.0], seed=0)
    assert x.shape == (10, 3, 1, 8, 8)
    for c in (0, 7):  # row c is what sample.py draws for labels=c on the same seeds
        want = generate(fn, diff, seeds_for(0, 0, 3), shape, labels=torch.full((3,), c), guidance_scale=1.0,
                        num_classes=10)
        assert torch.equal(x[c], ((want.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8))
    sweep = classes_figure(fn, diff, shape, 10, scales=[0.0, 2.0], seed=0)
    assert sweep.shape == (10, 2, 1, 8, 8)
    single = classes_figure(fn, diff, shape, 10, seeds=1, scales=[2.0], seed=0)  # row 0, seed 0: w=2
    assert torch.equal(sweep[0, 1], single[0, 0])
    path = make_figure(compose("figures", [f"ckpt_path={cond_ckpt}", "figure=classes", "figure.seeds=2",
                                           f"out={tmp_path / 'c.png'}", "device=cpu"]))
    assert path.is_file()


def test_the_progressive_figure_of_a_conditional_model_is_sample_pys_balanced_draw(cond_ckpt, tmp_path, capsys):
    """Its last frame is what ``generate`` draws with balanced labels (the quickstart is conditional), not the
    null token's samples; the figures that give no label say so."""
    from ddpm.commands.figures import figure_model_fn, make_figure, progressive_chain

    module = _random_conditional_module()
    fn, diff, shape = module.model_fn(use_ema=True), module.diffusion, (1, 8, 8)
    s = SamplerConfig(name="ancestral")  # the full chain (T=10)
    x, _ = progressive_chain(figure_model_fn(fn, 10, 12), diff, shape, num_images=12, frames=3, seed=2, sampler=s)
    want = generate(fn, diff, seeds_for(2, 0, 12), shape, s, labels=torch.arange(12) % 10, num_classes=10)
    null = generate(fn, diff, seeds_for(2, 0, 12), shape, s)
    as_uint8 = ((want.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    assert torch.equal(x[:, -1], as_uint8)
    assert not torch.equal(x[:, -1], ((null.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8))
    assert figure_model_fn(fn, None, 12) is fn
    make_figure(compose("figures", [f"ckpt_path={cond_ckpt}", "figure=shared_xt", "figure.splits=[500]",
                                    "figure.continuations=1", f"out={tmp_path / 's.png'}", "device=cpu"]))
    assert "figure=shared_xt of a class-conditional model: no label (its null token)" in capsys.readouterr().out


@pytest.mark.slow
def test_fid_callback_takes_labels_and_guidance_as_sample_py(tmp_path):
    from conftest import tiny_overrides

    from ddpm.commands.sampling import sample
    from ddpm.commands.training import train
    from ddpm.services.callbacks.fid import FIDCallback

    cfg = compose("train", tiny_overrides(tmp_path / "run", steps=4) + [
        "final_samples=0", "logger=none", "~callbacks.lr_monitor", "callbacks=fid", "model.num_classes=10",
        "callbacks.fid.every_n_steps=4", "callbacks.fid.num_samples=12", "callbacks.fid.batch_size=5",
        "callbacks.fid.sampler.steps=5", "callbacks.fid.metric.feature_extractor=digits", "callbacks.fid.use_ema=false",
        "callbacks.fid.metric.is_splits=3", "callbacks.fid.labels=random", "callbacks.fid.guidance_scale=1.5"])
    _, objs = train(cfg)
    res = next(c for c in objs["trainer"].callbacks if isinstance(c, FIDCallback)).last_result
    m = sample(sample_cfg(tmp_path / "run" / "checkpoints" / "last.ckpt", tmp_path / "s", "num_samples=12",
                          "batch_size=7", "sampler=ddim", "sampler.steps=5", "use_ema=false", "compute_fid=true",
                          "fid.feature_extractor=digits", "fid.is_splits=3", "labels=random", "guidance_scale=1.5"))
    assert m["fid_12_ddim5"] == pytest.approx(res["val/fid_12_ddim5"], rel=1e-6, abs=1e-6)


def test_cifar10_labels_come_from_the_batches(tmp_path):
    import pickle

    from test_data import write_fake_cifar

    from ddpm.core.data import CIFAR10DataModule

    write_fake_cifar(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    with open(folder / "data_batch_2", "rb") as f:
        entry = pickle.load(f)
    entry["labels"] = [3, 9, 4, 7]  # batch 2 holds train images 4..7
    with open(folder / "data_batch_2", "wb") as f:
        pickle.dump(entry, f, protocol=2)
    dm = CIFAR10DataModule(root=str(tmp_path), batch_size=4, random_flip=False)
    assert dm.class_names()[3] == "cat" and len(dm.class_names()) == 10
    dm.with_labels = True
    dm.setup("fit")
    assert dm.labels("train").tolist() == [0] * 4 + [3, 9, 4, 7] + [0] * 12 and dm.labels("test").tolist() == [1] * 6
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (4, 3, 32, 32) and y.tolist() == [1, 1, 1, 1]
