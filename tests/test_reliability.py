"""Reliability: exact resume, preemption signals, atomic checkpoints, NaN handling, untrusted files, bad input.

Every test is a tiny CPU run (seconds); the subprocess ones are marked slow.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli_env, run_python
from PIL import Image

from ddpm.commands.training import train
from ddpm.core.config import compose
from ddpm.core.io import atomic_torch_save, safe_load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def write_images(root: Path, n: int = 24, size: int = 8) -> None:
    rng = np.random.default_rng(3)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)).save(root / f"{i:03d}.png")


def folder_data(root: Path) -> list[str]:
    """24 images, 5 val + 2 test held out -> 17 train -> 2 batches of 8 per epoch (drop_last)."""
    write_images(root)
    return [
        "data=image_folder", f"data.root={root}", "data.resolution=8", "data.val_fraction=0.2",
        "data.test_fraction=0.1", "data.num_workers=0", "data.persistent_workers=false", "data.random_flip=true",
    ]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def csv_rows(run: Path) -> list[dict]:
    with open(run / "csv" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# ------------------------------------------------------------------------------------------- exact resume
def _resume_overrides(tmp_path: Path, total: int, accumulate: int) -> list[str]:
    # Validation every `half` optimizer steps in BOTH runs (the stop at `half` validates too), a step
    # checkpoint every optimizer step (to see that none is renamed -v1), warmup so that the LR changes.
    half = total // 2
    return [
        *folder_data(tmp_path / "imgs"),
        "optim.lr=1e-3", "optim.warmup_steps=3", "optim.ema_decay=0.9",
        f"trainer.accumulate_grad_batches={accumulate}",
        f"trainer.val_check_interval={half * accumulate}",
        "trainer.deterministic=true",
        "callbacks.model_checkpoint.every_n_train_steps=1",
        "callbacks.model_checkpoint.save_top_k=-1",
        "final_samples=0",
        "logger=wandb", "logger.wandb.offline=true",
    ]


@pytest.mark.slow  # ~40 s each on 2 loaded CPU cores (three tiny runs)
@pytest.mark.slow  # two tiny trainings: over 2 s on 2 cores
def test_resuming_a_checkpoint_past_max_steps_says_that_max_steps_counts_from_the_start(tmp_path, tiny):
    """A step-4 checkpoint with trainer.max_steps=2 trained nothing and wrote the same model as a new finished run."""
    first = tmp_path / "first"
    train(tiny(output_dir=first, steps=4))
    again = tmp_path / "again"
    with pytest.raises(ValueError, match=r"^ckpt_path: .*last\.ckpt is at step 4, past trainer\.max_steps=2, so "
                                         r"nothing would train\. .* for 2 more steps pass trainer\.max_steps=6"):
        train(tiny(f"ckpt_path={first}", output_dir=again, steps=2))
    assert not (again / "metrics.json").exists() and not (again / "checkpoints").exists()
    _, resumed = train(tiny(f"ckpt_path={first}", output_dir=again, steps=6))  # the fix it names works
    assert resumed["trainer"].global_step == 6


@pytest.mark.parametrize(
    ("accumulate", "batch", "total", "every"),
    [
        (1, 8, 4, 1),  # 17 train images: 2 batches per epoch, the stop at step 2 is an epoch boundary
        (1, 4, 6, 1),  # 4 batches per epoch: the stop at step 3 is inside epoch 0, the rest crosses into epoch 1
        (2, 2, 6, 1),  # 8 micro-batches = 4 optimizer steps per epoch: the stop at step 3 is mid-epoch
        # the default cadence (no step checkpoint at the stop): last.ckpt is the one written when max_steps is
        # reached, not Lightning's train-end one, which would close the epoch and start a new one on resume
        (1, 4, 6, 10000),
    ],
    ids=["epoch-boundary", "mid-epoch", "mid-epoch-accumulate2", "mid-epoch-max-steps-stop"],
)
def test_resume_is_bit_identical_to_a_straight_run(tmp_path, tiny, accumulate, batch, total, every, monkeypatch):
    """2N steps straight == N steps, stop, ckpt_path=last, N more: weights, EMA, optimizer, LR, step, data.

    Also when N falls inside an epoch: the training loader is stateful (ddpm.core.data.ResumableDataLoader), so the
    resumed run continues that epoch with exactly the batches, order and flips the straight run trains on.
    """
    monkeypatch.setenv("WANDB_MODE", "offline")
    half = total // 2
    common = [*_resume_overrides(tmp_path, total, accumulate), f"data.batch_size={batch}",
              f"callbacks.model_checkpoint.every_n_train_steps={every}"]
    straight_dir, resumed_dir = tmp_path / "straight", tmp_path / "resumed"

    straight_metrics, straight = train(tiny(*common, output_dir=straight_dir, steps=total))
    _, first = train(tiny(*common, output_dir=resumed_dir, steps=half))
    run_id = (resumed_dir / "wandb_run_id.txt").read_text().strip()
    assert first["trainer"].global_step == half
    ckpts_before = {p.name: sha(p) for p in (resumed_dir / "checkpoints").glob("step_*.ckpt")}
    rows_before = csv_rows(resumed_dir)
    resumed_metrics, resumed = train(tiny(*common, "ckpt_path=last", output_dir=resumed_dir, steps=total))
    # fit_seconds covers this process's steps only; the summary says where it started
    assert resumed_metrics["resumed_from_step"] == half and "resumed_from_step" not in straight_metrics
    assert json.loads((resumed_dir / "metrics.json").read_text())["resumed_from_step"] == half

    a, b = load(straight_dir / "checkpoints" / "last.ckpt"), load(resumed_dir / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == total
    assert resumed["trainer"].global_step == total
    assert int(b["state_dict"]["ema_num_updates"]) == total
    for key in a["state_dict"]:  # raw (net.*) and EMA (ema.*) weights
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    oa, ob = a["optimizer_states"][0], b["optimizer_states"][0]
    assert oa["param_groups"][0]["lr"] == ob["param_groups"][0]["lr"]
    for i, state in oa["state"].items():
        for name, value in state.items():
            assert torch.equal(value, ob["state"][i][name]), (i, name)
    assert a["lr_schedulers"] == b["lr_schedulers"]
    assert b["lr_schedulers"][0]["last_epoch"] == total  # scheduler stepped per optimizer step, not micro-batch

    # The same learning rate and loss at every optimizer step, in one CSV log that was appended to.
    def curve(run: Path, key: str) -> dict:
        return {int(r["step"]): float(r[key]) for r in csv_rows(run) if r.get(key)}

    assert curve(straight_dir, "lr-Adam") == curve(resumed_dir, "lr-Adam")
    assert len(curve(resumed_dir, "lr-Adam")) == total
    assert curve(straight_dir, "train/loss") == curve(resumed_dir, "train/loss")
    def nonempty(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if v} for r in rows]

    rows_after = nonempty(csv_rows(resumed_dir))
    assert rows_after[: len(rows_before)] == nonempty(rows_before)  # the first half's rows are kept, in order
    assert rows_after == nonempty(csv_rows(straight_dir))  # ... and the whole log equals the straight run's

    # One W&B run, continued; step checkpoints never renamed -v1 nor rewritten.
    assert (resumed_dir / "wandb_run_id.txt").read_text().strip() == run_id
    offline_runs = sorted((resumed_dir / "wandb").glob("offline-run-*"))
    # offline-run-<time>-<id>; wandb appends -1, -2, ... when both halves start within the same second
    assert len(offline_runs) >= 1
    assert all(re.fullmatch(rf"offline-run-\d{{8}}_\d{{6}}-{run_id}(-\d+)?", p.name) for p in offline_runs)
    names = sorted(p.name for p in (resumed_dir / "checkpoints").iterdir())
    assert not [n for n in names if "-v" in n], names
    assert names == sorted(p.name for p in (straight_dir / "checkpoints").iterdir())
    for name, digest in ckpts_before.items():
        assert sha(resumed_dir / "checkpoints" / name) == digest, f"{name} overwritten by the resumed run"


# ------------------------------------------------------------------------------------------- preemption
@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGUSR1"])
def test_signal_writes_last_ckpt_exits_zero_and_resumes(tmp_path, sig):
    """A real `python train.py` gets the signal after its first step checkpoint: it writes last.ckpt at a step
    boundary and exits 0; started again in the same run directory with ckpt_path=last it continues exactly."""
    from conftest import tiny_overrides

    run = tmp_path / "run"
    args = [sys.executable, str(ROOT / "train.py"), *tiny_overrides(run, steps=100_000),
            "trainer.val_check_interval=100000", "callbacks.model_checkpoint.every_n_train_steps=2",
            f"hydra.run.dir={run}", f"preemption_signals=[{sig}]"]
    proc = subprocess.Popen(args, cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    # any step checkpoint: the one of step 2 is rotated out at step 4 already, faster than a poll can see it
    def started() -> bool:
        return any((run / "checkpoints").glob("step_*.ckpt"))

    try:
        deadline = time.time() + 240
        while not started() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        if not started():
            proc.kill()
            raise AssertionError(proc.communicate(timeout=30)[0][-3000:] or "no checkpoint")
        os.kill(proc.pid, getattr(signal, sig))
        out, _ = proc.communicate(timeout=240)
    finally:  # a failing test must not leave a 100000-step training running for the rest of the suite
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert proc.returncode == 0, out[-3000:]
    assert f"received {sig}" in out
    ckpt = load(run / "checkpoints" / "last.ckpt")
    stopped = ckpt["global_step"]
    assert 2 <= stopped < 100_000
    assert not list(run.glob("samples.png"))  # no final sampling in the grace period

    resume = [a if not a.startswith("trainer.max_steps=") else f"trainer.max_steps={stopped + 2}" for a in args]
    done = run_python([*resume[1:], "ckpt_path=last"], tmp_path, 300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert load(run / "checkpoints" / "last.ckpt")["global_step"] == stopped + 2
    assert "Restoring states from the checkpoint" in done.stdout + done.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # the same run directory, nothing else

    # The signal landed inside an epoch (179 batches of 8 digits per epoch), and the continued run trained on
    # exactly what an uninterrupted run of stopped + 2 steps trains on: the same raw and EMA weights.
    straight_dir = tmp_path.parent / f"{tmp_path.name}_straight"
    train(compose("train", [*tiny_overrides(straight_dir, steps=stopped + 2), "trainer.val_check_interval=100000",
                            "callbacks.model_checkpoint.every_n_train_steps=2"]))
    a, b = load(straight_dir / "checkpoints" / "last.ckpt"), load(run / "checkpoints" / "last.ckpt")
    assert stopped % 179 != 0
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key


def test_unknown_preemption_signal_is_a_clear_error(tiny):
    with pytest.raises(ValueError, match="SIGFOO.*valid"):
        train(tiny("preemption_signals=[SIGFOO]"))


# ------------------------------------------------------------------------------------------- atomic writes
_WRITER = """
import sys, torch
from ddpm.core.io import atomic_torch_save
path = sys.argv[1]
i = 0
while True:
    i += 1
    atomic_torch_save({"version": i, "data": torch.full((2_000_000,), float(i))}, path)
    print(i, flush=True)
"""


@pytest.mark.parametrize("delay", [0.7, 1.3, 2.1])
@pytest.mark.slow  # over 2 s on 2 cores: the fast tier stays under 3 minutes
def test_kill_9_while_writing_leaves_a_complete_checkpoint(tmp_path, delay):
    """SIGKILL at a random moment of repeated 8 MB checkpoint writes: the file always loads and is one whole
    version; the temp file a kill leaves behind is hidden and never taken for the checkpoint."""
    target = tmp_path / "checkpoints" / "last.ckpt"
    atomic_torch_save({"version": 0, "data": torch.zeros(2_000_000)}, target)
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(target)], env=cli_env(), stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    proc.stdout.readline()  # at least one complete write, then kill somewhere in the following ones
    time.sleep(delay * 0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    ckpt = safe_load_checkpoint(target)
    assert ckpt["version"] >= 1
    assert torch.equal(ckpt["data"], torch.full((2_000_000,), float(ckpt["version"])))
    from ddpm.services.resume import resolve_ckpt_path

    assert resolve_ckpt_path("last", tmp_path) == str(target)
    assert all(p.name.startswith(".last.ckpt.") and ".tmp" in p.name for p in target.parent.iterdir() if p != target)
    assert not [p for p in target.parent.iterdir() if p != target and p.suffix == ".ckpt"]


def test_a_run_removes_the_temp_files_a_killed_write_left_in_its_checkpoints(tiny, tmp_path):
    """What test_kill_9_while_writing_... leaves (a hidden .last.ckpt.*.tmp) is removed when a run starts in
    that run directory; the checkpoints and anything else there are kept."""
    from ddpm.core.io import atomic_write

    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    ckpts.mkdir(parents=True)
    writers = [atomic_write(ckpts / name, suffix=suffix)  # writes that never finish (their process killed)
               for name, suffix in (("last.ckpt", ""), ("step_00000002.ckpt", ""), ("grid.png", ".png"))]
    stale = [w.__enter__() for w in writers]
    (ckpts / "notes.txt").write_text("mine")
    (ckpts / ".hidden").write_text("mine")
    assert all(p.is_file() for p in stale)
    train(tiny(output_dir=run, steps=1))
    assert not any(p.exists() for p in stale)
    assert {p.name for p in ckpts.iterdir()} >= {"last.ckpt", "notes.txt", ".hidden"}
    assert not [p for p in ckpts.iterdir() if ".tmp" in p.name]


# ------------------------------------------------------------------------------------------- numerical faults
class _PoisonAt:
    """A callback that makes the batch of one step NaN (or one gradient Inf), recording weights around it."""

    def __new__(cls, step: int, what: str = "batch"):
        import lightning as L

        class Poison(L.Callback):
            def __init__(self):
                self.step, self.what = step, what
                self.before = self.after = None
                self.ckpt_hash = None

            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                if trainer.global_step == self.step:
                    self.before = {k: v.clone() for k, v in pl_module.net.state_dict().items()}
                    self.ema_before = {k: v.clone() for k, v in pl_module.ema.state_dict().items()}
                    self.ema_count_before = int(pl_module.ema_num_updates)
                    last = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
                    self.ckpt_hash = sha(last) if last.exists() else None
                    if self.what == "batch":
                        batch.fill_(float("nan"))

            def on_after_backward(self, trainer, pl_module):
                if trainer.global_step == self.step and self.what == "grad":
                    next(p for p in pl_module.net.parameters() if p.grad is not None).grad[0] = float("inf")

            def on_train_batch_end(self, trainer, pl_module, *args):
                if trainer.global_step == self.step + 1 and self.after is None:
                    self.after = {k: v.clone() for k, v in pl_module.net.state_dict().items()}
                    self.ema_after = {k: v.clone() for k, v in pl_module.ema.state_dict().items()}
                    self.ema_count_after = int(pl_module.ema_num_updates)

        return Poison()


def _train_with(cfg, callback):
    from ddpm.commands import training

    orig = training.build_callbacks
    training.build_callbacks = lambda c: orig(c) + [callback]
    try:
        return train(cfg)
    finally:
        training.build_callbacks = orig


@pytest.mark.parametrize("what", ["batch", "grad"])
def test_nan_policy_stop_names_the_step_and_keeps_the_good_checkpoint(tiny, tmp_path, what):
    poison = _PoisonAt(3, what)
    cfg = tiny("nan_policy=stop", "callbacks.model_checkpoint.every_n_train_steps=1", steps=6)
    with pytest.raises(FloatingPointError, match="global step 3") as info:
        _train_with(cfg, poison)
    assert "Likely causes" in str(info.value) and "nan_policy=skip" in str(info.value)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert poison.ckpt_hash is not None and sha(last) == poison.ckpt_hash  # last good checkpoint untouched
    ckpt = load(last)
    assert ckpt["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert not (tmp_path / "run" / "checkpoints" / "step_00000004.ckpt").exists()


@pytest.mark.parametrize("what", ["batch", "grad"])
@pytest.mark.slow  # over 2 s on 2 cores: the fast tier stays under 3 minutes
def test_nan_policy_skip_leaves_weights_unchanged_and_finishes(tiny, tmp_path, what):
    poison = _PoisonAt(2, what)
    _, objs = _train_with(tiny("nan_policy=skip", steps=5), poison)
    module = objs["module"]
    assert objs["trainer"].global_step == 5
    for k, v in poison.before.items():  # the skipped step did not move the raw weights
        assert torch.equal(v, poison.after[k]), k
    for k, v in poison.ema_before.items():  # nor the EMA, whose update count stays too
        assert torch.equal(v, poison.ema_after[k]), k
    assert poison.ema_count_after == poison.ema_count_before == 2
    assert int(module.ema_num_updates) == 4  # 5 optimizer steps, one of them skipped
    assert all(torch.isfinite(p).all() for p in module.parameters())
    ckpt = load(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_nonfinite_weights_are_never_checkpointed(tiny, tmp_path):
    from ddpm.core.module import DiffusionModule

    _, objs = train(tiny(steps=2))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    before = sha(last)
    module: DiffusionModule = objs["module"]
    with torch.no_grad():
        next(module.net.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite weights"):
        objs["trainer"].save_checkpoint(last)
    assert sha(last) == before


# ------------------------------------------------------------------------------------------- untrusted files
class _Evil:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_and_does_not_run(tiny, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Evil(marker)}, evil)
    with pytest.raises(ValueError, match="Refusing to load") as info:
        safe_load_checkpoint(evil)
    assert "weights_only" in str(info.value)
    assert not marker.exists()
    with pytest.raises(ValueError, match="Refusing to load"):
        train(tiny(f"ckpt_path={evil}"))
    assert not marker.exists()
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before training started


def test_a_run_writes_only_inside_its_run_directory(tiny, tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "existing.txt").write_text("x")
    monkeypatch.chdir(cwd)
    run = cwd / "run"

    def listing() -> set:
        return {str(p.relative_to(cwd)) for p in cwd.rglob("*") if run not in p.parents and p != run}

    home_before = set(os.listdir(tmp_path))
    before = listing()
    train(tiny(output_dir=run, steps=2))
    assert listing() == before
    assert set(os.listdir(tmp_path)) == home_before
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "metrics.json").is_file()


# ------------------------------------------------------------------------------------------- bad input
def test_unknown_model_option_lists_the_valid_ones():
    with pytest.raises(Exception) as info:
        compose("train", ["model=unet_huge", "paths.output_dir=/tmp/unused"])
    text = str(info.value)
    assert "unet_huge" in text and "unet_small" in text and "unet_cifar32" in text


def test_invalid_objective_combination_is_refused_before_training(tiny, tmp_path):
    with pytest.raises(ValueError, match="var_type=learned"):
        tiny("objective=simple", "objective.var_type=learned")
    assert not (tmp_path / "run").exists()


def test_missing_or_empty_dataset_folder_says_how_to_get_the_data(tiny, tmp_path):
    from ddpm.core.data.base import DatasetNotFoundError

    with pytest.raises(DatasetNotFoundError, match="does not exist.*data.root="):
        train(tiny("data=image_folder", f"data.root={tmp_path / 'nowhere'}", "data.num_workers=0"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="no image files found.*data.root="):
        train(tiny("data=image_folder", f"data.root={tmp_path / 'empty'}", "data.num_workers=0"))
    with pytest.raises(DatasetNotFoundError, match="(?i)download|cifar-10-python"):
        train(tiny("data=cifar10", f"data.root={tmp_path / 'empty'}"))


def test_images_of_any_size_mode_and_channels_are_converted(tiny, tmp_path):
    root = tmp_path / "mixed"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (10, 14), dtype=np.uint8), "L").save(root / f"gray{i}.png")
        Image.fromarray(rng.integers(0, 256, (20, 12, 4), dtype=np.uint8), "RGBA").save(root / f"rgba{i}.png")
        Image.fromarray(rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)).convert("P").save(root / f"pal{i}.png")
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / f"rgb{i}.jpg")
    overrides = ("data=image_folder", f"data.root={root}", "data.resolution=8", "data.num_workers=0",
                 "data.val_fraction=0.2", "data.test_fraction=0.1", "final_samples=0")
    _, objs = train(tiny(*overrides, steps=2, batch=4))
    assert objs["module"].image_shape == (3, 8, 8)
    batch = next(iter(objs["datamodule"].train_dataloader()))
    assert batch.shape[1:] == (3, 8, 8) and batch.dtype == torch.float32

    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    from ddpm.core.data.folder import ImageDecodeError

    with pytest.raises(ImageDecodeError, match="broken.png"):
        dm = objs["datamodule"].__class__(root=str(root), resolution=8, num_workers=0, val_fraction=0.0, batch_size=4,
                                          test_fraction=0.0)
        dm.setup("fit")
        for i in range(len(dm.train_dataset)):
            dm.train_dataset[i]


def test_corrupt_or_truncated_checkpoint_is_a_clear_error(tiny, tmp_path):
    train(tiny(steps=1, output_dir=tmp_path / "good"))
    good = (tmp_path / "good" / "checkpoints" / "last.ckpt").read_bytes()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good[: len(good) // 2])
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all" * 10)
    for bad in (truncated, garbage):
        kind = "a zip archive.*truncated or corrupt|a text file"
        with pytest.raises(ValueError, match=f"is not a checkpoint \\(({kind})\\)"):
            train(tiny(f"ckpt_path={bad}"))
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        train(tiny(f"ckpt_path={tmp_path / 'missing.ckpt'}"))


def test_checkpoint_from_another_model_preset_is_refused_naming_the_key(tiny, tmp_path):
    train(tiny(steps=1))
    with pytest.raises(ValueError, match="trained with model=.*'ch': 8.*this run has model=.*'ch': 16"):
        train(tiny("model.ch=16", "ckpt_path=last"))


def test_global_batch_not_divisible_by_devices_is_a_clear_error():
    from types import SimpleNamespace

    from ddpm.core.data import DigitsDataModule

    dm = DigitsDataModule(batch_size=8)
    dm.trainer = SimpleNamespace(world_size=3)
    with pytest.raises(ValueError, match=r"batch_size=8 is the GLOBAL batch.*world size.*= 3.*\[1, 2, 4, 8\]"):
        dm.setup("fit")


def test_sample_num_samples_must_be_positive(tmp_path):
    from ddpm.commands.sampling import sample

    for n in (0, -5):  # refused when the config is composed (python sample.py: before Hydra starts the job)
        with pytest.raises(ValueError, match=f"num_samples={n} is not valid: expected an integer >= 1"):
            sample(compose("sample", [f"num_samples={n}", f"out_dir={tmp_path / 'samples'}",
                                      f"ckpt_path={tmp_path / 'none.ckpt'}"]))
    assert not (tmp_path / "samples").exists() or not any((tmp_path / "samples").iterdir())


@pytest.mark.parametrize("where", ["file", "device"])
def test_unwritable_output_dir_fails_before_training(tiny, tmp_path, where):
    # (A read-only directory is no test when running as root, as CI does: root may write anywhere.)
    if where == "file":
        parent = tmp_path / "a_file"
        parent.write_text("x")
    else:
        parent = Path("/dev/null")
    with pytest.raises(PermissionError, match="paths.output_dir=.*cannot be created or written"):
        train(tiny(output_dir=parent / "run"))
