"""The training application: configs carry the paper's values, every data/objective pair trains, EMA is kept
beside the raw weights and used for validation, loggers, DDP, multirun + report."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import run_cli
from omegaconf import OmegaConf
from PIL import Image
from test_data import write_fake_cifar  # the torchvision layout, written by the data tests' helper

from ddpm.commands.training import train
from ddpm.core.config import compose

ROOT = Path(__file__).resolve().parents[1]
OBJECTIVES = ["simple", "eps_vlb_fixed", "eps_vlb_learned", "mu_vlb_fixed", "mu_vlb_learned", "mu_mse", "hybrid"]
DATASETS = ["digits", "cifar10", "image_folder", "celebahq256", "lsun_church256", "lsun_bedroom256", "lsun_cat256"]


def write_image_folder(root: Path, n: int = 24, size: int = 12) -> None:
    rng = np.random.default_rng(1)
    for i in range(n):
        sub = root / f"class{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, size=(size, size + 3, 3), dtype=np.uint8)).save(sub / f"{i}.png")


def data_overrides(name: str, tmp_path: Path) -> list[str]:
    """Tiny on-disk stand-ins for the datasets that cannot be downloaded here."""
    if name == "digits":
        return ["data=digits"]
    if name == "cifar10":
        write_fake_cifar(tmp_path / "cifar", n_per_batch=16, n_test=16)
        return ["data=cifar10", f"data.root={tmp_path / 'cifar'}"]
    write_image_folder(tmp_path / "imgs")
    return [f"data={name}", f"data.root={tmp_path / 'imgs'}", "data.resolution=8", "data.val_fraction=0.2",
            "data.test_fraction=0.1"]


# ----------------------------------------------------------------------------------------------- configs
def test_cifar10_config_has_every_paper_value():
    cfg = compose("train", ["data=cifar10", "objective=simple", "paths.output_dir=/tmp/unused"])
    assert cfg.model._target_ == "ddpm.core.nets.UNet"
    assert (cfg.model.ch, list(cfg.model.ch_mult), cfg.model.num_res_blocks) == (128, [1, 2, 2, 2], 2)
    assert list(cfg.model.attn_resolutions) == [16] and cfg.model.dropout == 0.1
    assert (cfg.diffusion.schedule, cfg.diffusion.num_timesteps) == ("linear", 1000)
    assert (cfg.objective.mean_type, cfg.objective.var_type, cfg.objective.loss_type) == ("eps", "fixed_large", "mse")
    assert cfg.optim.lr == 2e-4 and cfg.optim.warmup_steps == 5000 and cfg.optim.ema_decay == 0.9999
    assert list(cfg.optim.betas) == [0.9, 0.999] and cfg.optim.eps == 1e-8 and cfg.optim.weight_decay == 0
    assert cfg.data.batch_size == 128 and cfg.data.random_flip is True
    assert cfg.trainer.gradient_clip_val == 1.0 and cfg.trainer.gradient_clip_algorithm == "norm"
    assert cfg.trainer.max_steps == 800_000


@pytest.mark.parametrize(
    "data,steps,flip",
    [("celebahq256", 500_000, True), ("lsun_church256", 1_200_000, True), ("lsun_bedroom256", 2_400_000, False),
     ("lsun_cat256", 1_800_000, False)],
)
def test_256_configs_have_paper_values(data, steps, flip):
    cfg = compose("train", [f"data={data}", "paths.output_dir=/tmp/unused"])
    assert list(cfg.model.ch_mult) == [1, 1, 2, 2, 4, 4] and cfg.model.dropout == 0.0 and cfg.model.ch == 128
    assert cfg.optim.lr == 2e-5 and cfg.optim.warmup_steps == 5000 and cfg.optim.ema_decay == 0.9999
    assert cfg.data.batch_size == 64 and cfg.data.random_flip is flip and cfg.data.resolution == 256
    assert cfg.trainer.max_steps == steps and cfg.trainer.gradient_clip_val == 1.0


def test_the_quickstart_departs_from_the_paper_only_where_its_recipe_says():
    """The quickstart (recipe/digits.yaml) adds the cosine schedule, the cosine lr decay and class conditioning on
    the digit labels to the shared digits recipe; the command line takes each back, and the digits sweeps of
    Table 2 keep the paper's linear schedule, constant lr and unconditional network
    (bench/results/quickstart_tuning_2026-12-07.md and quickstart_conditional_2026-12-07.md measured the choices)."""
    quick = compose("train", ["paths.output_dir=/tmp/unused"])
    assert (quick.diffusion.schedule, quick.diffusion.num_timesteps, quick.optim.lr_decay) == ("cosine", 1000, "cosine")
    assert (quick.objective.mean_type, quick.objective.loss_type) == ("eps", "mse")  # L_simple
    assert quick.model.num_classes == 10 and quick.objective.cond_drop_prob == 0.1  # conditional, label dropout
    before = compose("train", ["paths.output_dir=/tmp/unused", "diffusion=linear", "optim.lr_decay=none",
                               "model.num_classes=null"])
    assert (before.diffusion.schedule, before.optim.lr_decay, before.model.num_classes) == ("linear", "none", None)
    def rest(cfg):  # all but the three choices (and hydra's record of the command line)
        out = {k: v for k, v in cfg.items() if k not in ("diffusion", "hydra")}
        return out | {"optim": {k: v for k, v in cfg.optim.items() if k != "lr_decay"},
                      "model": {k: v for k, v in cfg.model.items() if k != "num_classes"}}

    assert rest(before) == rest(quick)
    for sweep, extra in (("table2_digits", ["objective=simple"]), ("objectives_digits", ["+row=v_mse"]),
                         ("table2", ["objective=mu_mse"]), ("table2", ["data=cifar10"])):
        cfg = compose("train", ["paths.output_dir=/tmp/unused", f"sweep={sweep}", "hydra.mode=RUN", *extra])
        assert (cfg.diffusion.schedule, cfg.optim.lr_decay, cfg.model.num_classes) == ("linear", "none", None), sweep
    row = compose("train", ["paths.output_dir=/tmp/unused", "sweep=objectives_digits", "+row=simple_cosine",
                            "hydra.mode=RUN"])
    assert (row.diffusion.schedule, row.optim.lr_decay) == ("cosine", "none")  # the row's own schedule wins
    for other in ("data=cifar10", "data=image_folder data.root=/tmp"):  # the other recipes stay unconditional
        assert compose("train", ["paths.output_dir=/tmp/unused", *other.split()]).model.num_classes is None, other


def test_command_line_beats_the_dataset_recipe():
    cfg = compose("train", ["data=cifar10", "model=unet_small", "optim.lr=1e-3", "paths.output_dir=/tmp/unused"])
    assert cfg.model.ch == 32 and cfg.optim.lr == 1e-3 and cfg.optim.warmup_steps == 5000


# Table 2's rows (mean type, variance, loss); fixed variances are the official code's fixed_large (README).
TABLE2 = {
    "mu_vlb_learned": ("mu", "learned", "kl"),
    "mu_vlb_fixed": ("mu", "fixed_large", "kl"),
    "mu_mse": ("mu", "fixed_large", "mse"),
    "eps_vlb_learned": ("eps", "learned", "kl"),
    "eps_vlb_fixed": ("eps", "fixed_large", "kl"),
    "simple": ("eps", "fixed_large", "mse"),
    "hybrid": ("eps", "learned_range", "hybrid"),  # Improved DDPM, beyond the paper
}


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_every_objective_is_its_table2_row(objective):
    cfg = compose("train", [f"objective={objective}", "paths.output_dir=/tmp/unused"])
    o = cfg.objective
    assert (o.mean_type, o.var_type, o.loss_type) == TABLE2[objective]  # the YAML's strings


def test_the_table2_sweep_runs_the_six_rows():
    cfg = compose("train", ["sweep=table2", "paths.output_dir=/tmp/unused"])
    rows = cfg.hydra.sweeper.params.objective.split(",")
    assert sorted(rows) == sorted(k for k in TABLE2 if k != "hybrid")


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["objective=simple", "objective.var_type=learned"], "loss_type=mse cannot train var_type=learned"),
        (["objective=eps_vlb_fixed", "objective.loss_type=hybrid"], "hybrid needs a learned variance"),
        (["objective=mu_mse", "objective.var_type=learned_range"], "fixed_large"),
        (["diffusion.schedule=sigmoid"], "linear"),
    ],
)
def test_invalid_combinations_fail_at_compose_with_valid_values(overrides, needle):
    with pytest.raises(ValueError, match=needle):
        compose("train", overrides + ["paths.output_dir=/tmp/unused"])


def test_misspelt_enum_fails_and_lists_the_valid_names():
    with pytest.raises(Exception) as info:
        compose("train", ["objective.mean_type=epz", "paths.output_dir=/tmp/unused"])
    text = str(info.value) + str(info.value.__cause__)
    assert "epz" in text and "eps" in text and "mu" in text


def test_unknown_group_option_lists_the_valid_ones():
    with pytest.raises(Exception) as info:
        compose("train", ["data=cifar100", "paths.output_dir=/tmp/unused"])
    assert "cifar10" in str(info.value) and "digits" in str(info.value)


# ----------------------------------------------------------------------------------------------- training
# The dataset and the objective are independent axes: every dataset with L_simple and every objective on the
# digits cover both (7 + 7 runs, digits x simple once) instead of all 49 pairs.
PAIRS = sorted({(d, "simple") for d in DATASETS} | {("digits", o) for o in OBJECTIVES})


@pytest.mark.parametrize("data,objective", PAIRS)
@pytest.mark.slow  # over 2 s on 2 cores: the fast tier stays under 3 minutes
def test_fast_dev_run_every_dataset_and_every_objective(tmp_path, tiny, data, objective):
    cfg = tiny(f"objective={objective}", *data_overrides(data, tmp_path), "trainer.fast_dev_run=true",
               "final_samples=0", batch=4)
    metrics, objs = train(cfg)
    assert np.isfinite(metrics["train/loss"])
    module = objs["module"]
    channels = module.image_shape[0]
    out = module.net(torch.zeros(1, *module.image_shape), torch.zeros(1, dtype=torch.long))
    assert out.shape[1] == (2 * channels if "learned" in objective or objective == "hybrid" else channels)


def test_lightning_can_rebuild_the_train_loader_for_overfit_batches(tiny):
    """trainer.overfit_batches makes Lightning re-instantiate the train DataLoader with a sequential sampler: our
    resumable loader keeps DataLoader's constructor, so that works, on the same first 2 batches every epoch."""
    _, objs = train(tiny("+trainer.overfit_batches=2", "final_samples=0", steps=3))
    loader = objs["trainer"].train_dataloader
    assert objs["trainer"].global_step == 3 and objs["trainer"].num_training_batches == 2
    assert type(loader).__name__ == "ResumableDataLoader" and type(loader.sampler).__name__ == "SequentialSampler"


def test_run_leaves_checkpoint_grid_metrics_and_config(tmp_path, tiny):
    metrics, objs = train(tiny(steps=6))
    out = objs["output_dir"]
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 6
    assert ckpt["cfg"]["objective"] == {"mean_type": "eps", "var_type": "fixed_large", "loss_type": "mse",
                                        "loss_weight": "none", "snr_gamma": 5.0, "p2_k": 1.0, "p2_gamma": 1.0}
    assert ckpt["cfg"]["model"]["ch"] == 8
    sd = ckpt["state_dict"]
    assert int(sd["ema_num_updates"]) == 6
    assert any(k.startswith("net.") for k in sd) and any(k.startswith("ema.") for k in sd)
    assert (out / "samples.png").is_file() and (out / "csv" / "metrics.csv").is_file()
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["global_step"] == 6 and np.isfinite(saved["val/bpd"]) and "digits/fid" in saved
    assert np.isfinite(saved["digits_b/fid"]) and np.isfinite(saved["digits/kid"])  # both extractors, and KID
    for q in range(4):
        assert f"train/loss_q{q}" in (out / "csv" / "metrics.csv").read_text()


@pytest.mark.parametrize("sampler", [("sampler=dpm_solver_sde", "sampler.steps=4"),
                                     ("sampler=restart", "sampler.steps=6", "sampler.restart_t_min=2",
                                      "sampler.restart_t_max=7")])
@pytest.mark.slow  # over 2 s on 2 cores: the fast tier stays under 3 minutes
def test_final_samples_and_grids_with_the_stochastic_solvers(tmp_path, tiny, sampler):
    """train.py's final samples and sample grids take every registered sampler the same way (T=10 here)."""
    metrics, objs = train(tiny(*sampler, "final_samples=4", "callbacks.sample_grid.every_n_steps=2", steps=4))
    saved = json.loads((objs["output_dir"] / "metrics.json").read_text())
    name = sampler[0].split("=")[1]
    assert saved["final_sampler"]["name"] == name and saved["final_sampler"]["steps"] == int(sampler[1].split("=")[1])
    assert np.isfinite(saved["digits/fid"]) and (objs["output_dir"] / "samples.png").is_file()
    grid = next(c for c in objs["trainer"].callbacks if type(c).__name__ == "SampleGrid")
    assert grid.sampler.name == name


@pytest.mark.slow  # over 2 s on 2 cores: the fast tier stays under 3 minutes
def test_ema_is_the_paper_average_and_validation_leaves_raw_weights_alone(tmp_path, tiny):
    """EMA after k steps equals the closed-form average of the raw weights seen after each step."""
    import lightning as L

    decay = 0.9
    trace = []

    class Trace(L.Callback):
        def on_train_start(self, trainer, pl_module):
            self.init = torch.nn.utils.parameters_to_vector(pl_module.ema.parameters()).detach().clone()

        def on_train_batch_end(self, trainer, pl_module, *args):
            trace.append(torch.nn.utils.parameters_to_vector(pl_module.net.parameters()).detach().clone())

        def on_validation_start(self, trainer, pl_module):
            self.before = {k: v.clone() for k, v in pl_module.net.state_dict().items()}

        def on_validation_end(self, trainer, pl_module):
            after = pl_module.net.state_dict()
            self.identical = all(torch.equal(self.before[k], after[k]) for k in after)

    from ddpm.commands import training

    cb = Trace()
    orig_build = training.build_callbacks
    training.build_callbacks = lambda c: orig_build(c) + [cb]
    try:
        _, objs = train(tiny(f"optim.ema_decay={decay}", steps=5))
    finally:
        training.build_callbacks = orig_build
    init = {"v": cb.init}
    expected = init["v"]
    for raw in trace:
        expected = decay * expected + (1 - decay) * raw
    ema = torch.nn.utils.parameters_to_vector(objs["module"].ema.parameters())
    torch.testing.assert_close(ema, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(ema, trace[-1])
    assert cb.identical


def test_validation_uses_ema_weights_only(tmp_path, tiny):
    _, objs = train(tiny("optim.ema_decay=0.5", steps=3))
    module, dm, trainer = objs["module"], objs["datamodule"], objs["trainer"]

    def bpd() -> float:
        return trainer.validate(module, datamodule=dm, verbose=False)[0]["val/bpd"]

    trained_ema = bpd()
    module.ema.load_state_dict(module.net.state_dict())
    ema_equals_raw = bpd()
    assert trained_ema != ema_equals_raw  # the bound is computed with the EMA weights...
    with torch.no_grad():
        for p in module.net.parameters():
            p.mul_(0.5)
    assert bpd() == ema_equals_raw  # ...and the raw weights play no part in it


@pytest.mark.slow  # over 5 s on 2 cores: the fast tier stays under 3 minutes
def test_compile_is_opt_in_and_leaves_weights_and_checkpoints_as_eager(tmp_path, tiny):
    """compile=true compiles the training network in place: the same checkpoint keys and (aot_eager, which
    replays the same aten ops without a C++ compiler) the same trained weights as the eager run; sample.py
    loads it eagerly."""
    from ddpm.services.loading import load_checkpoint_model

    assert compose("train").compile is False  # the paper's eager run by default
    _, eager = train(tiny(steps=3, output_dir=tmp_path / "eager"))
    _, comp = train(tiny("compile=true", "compile_backend=aot_eager", steps=3, output_dir=tmp_path / "compiled"))
    assert getattr(comp["module"].net, "_compiled_call_impl", None) is not None
    assert getattr(eager["module"].net, "_compiled_call_impl", None) is None
    a = torch.load(tmp_path / "eager" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "compiled" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert list(a) == list(b)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-6, msg=key)
    loaded = load_checkpoint_model(tmp_path / "compiled" / "checkpoints" / "last.ckpt")
    assert getattr(loaded.net, "_compiled_call_impl", None) is None


def test_bf16_mixed_keeps_fp32_master_weights_and_finite_losses(tmp_path, tiny):
    """trainer.precision=bf16-mixed (the GPU speed setting; CPU autocast runs the same code path here): the
    forward runs in bf16, the weights, EMA and Adam state stay float32, and nothing becomes non-finite."""
    import csv

    _, objs = train(tiny("trainer.precision=bf16-mixed", steps=4))
    assert objs["trainer"].precision == "bf16-mixed" and objs["trainer"].global_step == 4
    ckpt = torch.load(objs["output_dir"] / "checkpoints" / "last.ckpt", weights_only=True)
    weights = [v for k, v in ckpt["state_dict"].items() if k.startswith(("net.", "ema.")) and v.is_floating_point()]
    assert weights and all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights)
    moments = [t for st in ckpt["optimizer_states"][0]["state"].values() for t in st.values() if t.ndim > 0]
    assert moments and all(t.dtype == torch.float32 for t in moments)
    with open(objs["output_dir"] / "csv" / "metrics.csv", newline="") as f:
        losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert len(losses) == 4 and all(np.isfinite(losses))


def test_tensorboard_logger(tmp_path, tiny):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, objs = train(tiny("logger=tensorboard", steps=2))
    events = list((objs["output_dir"] / "tensorboard").rglob("events.out.tfevents*"))
    assert events
    acc = EventAccumulator(str(events[0].parent)).Reload()
    assert "samples/final" in acc.Tags()["images"]  # the final samples, and their digits score
    assert {"train/loss", "digits/fid", "digits/class_entropy"} <= set(acc.Tags()["scalars"])
    assert "hp_metric" not in acc.Tags()["scalars"]  # no placeholder -1


@pytest.mark.slow  # over 2 s on 2 cores: the fast tier stays under 3 minutes
def test_wandb_offline_run_dir_has_config_and_summary(tmp_path, tiny, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    _, objs = train(tiny("logger=wandb", "logger.wandb.offline=true", steps=3))
    runs = list((objs["output_dir"] / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    run_id = (objs["output_dir"] / "wandb_run_id.txt").read_text().strip()
    assert runs[0].name.endswith(run_id)
    # wandb >= 0.19 keeps config, history and summary as protobuf records in run-<id>.wandb (what `wandb sync`
    # uploads); look for the resolved config values and the logged metric names in it.
    # the final samples and their score reach W&B too
    needles = (b"fixed_large", b"ddpm.core.nets.UNet", b"train/loss", b"val/bpd", b"train/grad_norm", b"samples/final",
               b"digits/fid")
    # wandb's service process may still be writing the record file when wandb.finish() has returned (seen under
    # load: only the file header was there yet); give it up to a minute
    deadline = time.time() + 60
    while True:
        records = (runs[0] / f"run-{run_id}.wandb").read_bytes()
        if all(n in records for n in needles) or time.time() > deadline:
            break
        time.sleep(0.5)
    for needle in needles:
        assert needle in records, needle
    assert list(runs[0].rglob("samples/final_*.png"))


@pytest.mark.slow  # over 2 s on 2 cores: the fast tier stays under 3 minutes
def test_wandb_online_without_an_api_key_is_one_error_with_both_fixes(tmp_path, monkeypatch):
    """A fresh process (W&B reads its mode once per process): online, no key on this machine -> one line, not
    W&B's 45-line traceback."""
    from conftest import run_python, tiny_overrides

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    res = run_python([str(ROOT / "train.py"), *tiny_overrides(tmp_path / "run", steps=1), "logger=wandb"], tmp_path,
                     120, True, WANDB_MODE="online", HOME=str(tmp_path), HYDRA_FULL_ERROR="0",
                     WANDB_CONFIG_DIR=str(tmp_path / "wandb_config"))
    assert res.returncode == 1, res.stderr[-2000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and errors[0].startswith("Error: logger=wandb: ") and "API key" in errors[0], res.stderr
    assert "logger.wandb.offline=true, and `wandb sync`" in errors[0] and "Traceback" not in res.stderr


@pytest.mark.slow  # a composition: over 2 s on 2 cores
def test_a_loggers_unwritable_save_dir_is_one_error_naming_its_key(tiny, tmp_path):
    """It was "[Errno 2] No such file or directory" from TensorBoard, after the Trainer was built."""
    from ddpm.services.builders import build_loggers

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    cfg = tiny("logger=tensorboard", f"logger.tensorboard.save_dir={blocker / 'tb'}")
    with pytest.raises(PermissionError, match=r"^logger\.tensorboard\.save_dir='.*a_file/tb' cannot be created or "
                                              r"written: .* Choose a writable place: logger\.tensorboard\.save_dir="):
        build_loggers(cfg, tmp_path / "run")


@pytest.mark.slow  # a composition: over 2 s on 2 cores
def test_lightning_refusing_a_callback_setting_names_the_callback(tiny):
    from ddpm.services.builders import build_callbacks

    with pytest.raises(ValueError, match=r"^callbacks\.model_checkpoint: Invalid value for every_n_train_steps=-1"):
        build_callbacks(tiny("callbacks.model_checkpoint.every_n_train_steps=-1"))


# ----------------------------------------------------------------------------------------------- processes

@pytest.mark.slow
def test_ddp_two_cpu_processes_identical_ema_one_output_dir(tmp_path):
    from conftest import tiny_overrides

    out = tmp_path / "ddp_run"
    args = [str(ROOT / "train.py"), *tiny_overrides(out, steps=4), "trainer=ddp", "trainer.devices=2",
            "trainer.accelerator=cpu", "+callbacks.ema_hash._target_=ddpm.services.callbacks.EMAHash",
            "callbacks.sample_grid.every_n_steps=2", f"hydra.run.dir={out}"]  # rank 0 samples grids: no hang
    run_cli(args, cwd=tmp_path)
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step_00000002.png", "step_00000004.png"]
    hashes = sorted(out.glob("ema_sha_rank*.txt"))
    assert [h.name for h in hashes] == ["ema_sha_rank0.txt", "ema_sha_rank1.txt"]
    assert hashes[0].read_text() == hashes[1].read_text()
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["ddp_run"]  # one output directory, not one per rank
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4 and int(ckpt["state_dict"]["ema_num_updates"]) == 4
    # Lightning kept our sampler (a DistributedSampler: each rank its share) and saved the loader's position
    assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 0, "batches": 4}]

    # Preempted at step 2 (inside the first epoch: 179 batches of 4 per rank) and resumed: the same weights
    # as the straight 4 steps, so each rank continued its own share of the epoch where it stopped.
    part = tmp_path / "ddp_resumed"
    base = [str(ROOT / "train.py"), *tiny_overrides(part, steps=4), "trainer=ddp", "trainer.devices=2",
            "trainer.accelerator=cpu", f"hydra.run.dir={part}"]
    run_cli([*base, "trainer.max_steps=2"], cwd=tmp_path)
    run_cli([*base, "ckpt_path=last"], cwd=tmp_path)
    resumed = torch.load(part / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 4
    for key, value in ckpt["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key


@pytest.mark.slow
def test_multirun_two_objectives_and_report(tmp_path):
    from conftest import tiny_overrides

    overrides = [o for o in tiny_overrides("X") if not o.startswith("paths.output_dir")]
    sweep_dir = tmp_path / "sweep"
    # Table 2's rows are at the paper's linear schedule (the quickstart recipe's is cosine: its jobs would be
    # reported beside the table, not as its rows)
    run_cli([str(ROOT / "train.py"), "-m", "objective=simple,eps_vlb_fixed", "diffusion=linear", *overrides,
             f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and (p / "metrics.json").exists())
    assert len(jobs) == 2 and jobs[0] != jobs[1]
    report = run_cli(["-m", "ddpm.report", f"multirun_dir={sweep_dir}"], cwd=tmp_path).stdout
    # each job's own row: its objective's fields as the job's config has them, the steps its metrics.json
    # recorded, and that Table 2 row's paper numbers beside them; the rows not run say so
    rows = {}
    for line in report.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 9 and cells[0] != "Table 2 row" and cells[1] != "not run" and " (" in cells[1]:
            rows[cells[1].split(" (")[0]] = cells
    assert set(rows) == {"simple", "eps_vlb_fixed"}, report
    paper_fid = {"simple": "3.17", "eps_vlb_fixed": "13.51"}
    for job in jobs:
        cfg = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
        obj = cfg["objective"]
        name = "simple" if obj["loss_type"] == "mse" else "eps_vlb_fixed"
        row = rows[name]
        assert row[1].startswith(f"{name} ({obj['mean_type']}/{obj['var_type']}/{obj['loss_type']}")
        assert row[2] == str(json.loads((job / "metrics.json").read_text())["global_step"]) == "4"
        assert row[7] == paper_fid[name]
    assert sum("| not run |" in line for line in report.splitlines()) == 4  # the other Table 2 rows


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_tiny_job(tmp_path):
    from conftest import tiny_overrides

    overrides = [o for o in tiny_overrides("X", steps=2) if not o.startswith("paths.output_dir")]
    sweep_dir = tmp_path / "sweep"
    run_cli([str(ROOT / "train.py"), "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5",
             *overrides, f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path,
            fresh=True)  # submitit's job processes are not the fork server's (tests/README.md, Processes)
    (metrics,) = sweep_dir.rglob("metrics.json")
    assert list(sweep_dir.rglob(".submitit/*/*_log.out"))  # submitit ran it (the basic launcher writes no log)
    # the job is the run itself: the same weights as the same overrides trained here in-process
    direct = tmp_path / "direct"
    train(compose("train", [*overrides, f"paths.output_dir={direct}"]))
    ours = torch.load(metrics.parent / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    ref = torch.load(direct / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ours["global_step"] == ref["global_step"] == 2
    for key, value in ref["state_dict"].items():
        torch.testing.assert_close(ours["state_dict"][key], value, rtol=0, atol=0, msg=key)


def test_slurm_launcher_composes():
    cfg = compose("train", ["hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu",
                            "paths.output_dir=/tmp/unused"])
    assert cfg.hydra.launcher.partition == "gpu" and "submitit" in cfg.hydra.launcher._target_

def test_an_attention_size_the_unet_never_has_trains_with_a_loud_warning(tiny, caplog):
    """model=unet_cifar32's attn_resolutions=[16] on 8x8 digits, or a typo: the net silently had no attention."""
    from ddpm.core.checks import attention_warning
    from ddpm.core.nets.layers import AttnBlock

    assert attention_warning(OmegaConf.create({"ch_mult": [1, 2], "attn_resolutions": [4]}), 8) is None
    assert attention_warning(OmegaConf.create({"ch_mult": [1, 2], "attn_resolutions": []}), 8) is None
    with caplog.at_level(logging.WARNING, logger="ddpm"):
        _, objs = train(tiny("model.attn_resolutions=[16]", "final_samples=0", steps=1))
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("model.attn_resolutions=[16]" in m and "levels are [8, 4]" in m and "levels have attention nowhere" in m
               for m in said), said
    assert sum(isinstance(m, AttnBlock) for m in objs["module"].net.modules()) == 1  # the middle block's only
