"""optim.lr_decay (beyond the paper, opt-in): the lr schedule in closed form, in a real run, and its bad values."""

from __future__ import annotations

import csv
import math
import re

import pytest

from ddpm.commands.training import train
from ddpm.core.checks import check_command
from ddpm.core.config import compose
from ddpm.core.lr import lr_factor


@pytest.mark.parametrize("decay", ["none", "cosine", "linear"])
def test_the_factor_is_the_warmup_then_the_closed_form_decay_to_zero(decay):
    warmup, total = 10, 110
    for step in range(warmup):
        assert lr_factor(step, warmup, total, decay) == step / warmup  # the official warmup, 0 first
    for step in range(warmup, total + 5):
        p = min((step - warmup) / (total - warmup), 1.0)
        want = {"none": 1.0, "cosine": 0.5 * (1 + math.cos(math.pi * p)), "linear": 1 - p}[decay]
        assert lr_factor(step, warmup, total, decay) == pytest.approx(want, abs=1e-15)
    if decay != "none":
        assert lr_factor(total, warmup, total, decay) == pytest.approx(0.0, abs=1e-15)
        assert lr_factor(60, warmup, total, decay) == pytest.approx(0.5)  # half way: both at one half
        assert lr_factor(35, warmup, total, "cosine") > lr_factor(35, warmup, total, "linear")  # cosine keeps more early
    assert lr_factor(5, 0, total, decay) == (1.0 if decay == "none" else pytest.approx(1 - 5 / total if decay == "linear"
                                                                                        else 0.5 * (1 + math.cos(math.pi * 5 / total))))


def test_a_run_trains_with_that_lr_at_every_step(tiny, tmp_path):
    steps, warmup, lr = 8, 2, 1e-3
    train(tiny("optim.lr_decay=cosine", f"optim.warmup_steps={warmup}", f"optim.lr={lr}", "final_samples=0",
               steps=steps))
    with open(tmp_path / "run" / "csv" / "metrics.csv", newline="") as f:
        logged = {int(r["step"]): float(r["lr-Adam"]) for r in csv.DictReader(f) if r.get("lr-Adam")}
    assert sorted(logged) == list(range(steps))
    for step, value in logged.items():
        assert value == pytest.approx(lr * lr_factor(step, warmup, steps, "cosine"), rel=1e-6, abs=1e-12)
    assert logged[steps - 1] < 0.1 * lr < logged[warmup] == pytest.approx(lr)  # the last update: near 0


def test_the_paper_recipes_keep_the_constant_lr():
    for data in ("cifar10", "celebahq256", "lsun_church256"):
        assert compose("train", [f"data={data}", "paths.output_dir=/unused"]).optim.lr_decay == "none"


@pytest.mark.parametrize(("overrides", "message"), [
    (["optim.lr_decay=exponential"], "optim.lr_decay='exponential' is not valid: expected none | cosine | linear"),
    (["optim.lr_decay=cosine", "trainer.max_steps=-1"], "optim.lr_decay=cosine decays the lr to 0 at trainer.max_steps"),
])
def test_bad_values_name_the_key_and_the_fix(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):  # compose runs the command's checks
        check_command("train", compose("train", ["paths.output_dir=/unused", *overrides]))
