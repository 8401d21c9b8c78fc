"""``python -m ddpm.report``: every column read from known metrics files in hand-built job directories."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ROOT, TINY_MODEL, run_cli, run_python

from ddpm.commands import report as report_app


def main(overrides: list[str]) -> str:
    """``python -m ddpm.report OVERRIDES`` in this process (conf/report.yaml composed with the overrides)."""
    from ddpm.core.config import compose

    text = report_app.report(report_app.options(compose("report", overrides)))
    print(text)  # as the command does
    return text

SAMPLER = {"name": "respaced", "steps": 100, "eta": None, "clip_denoised": True, "var_type": None}
FULL_CHAIN = {"name": "ancestral", "steps": 1000, "eta": None, "clip_denoised": True, "var_type": None}


def write_job(root: Path, name: str, objective: dict, *, lr: float = 2e-3, train: dict | None = None,
              evals: dict[str, dict] | None = None) -> Path:
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    cfg = {
        "objective": objective,
        "data": {"_target_": "ddpm.core.data.DigitsDataModule", "batch_size": 128},
        "model": {"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1},
        "diffusion": {"schedule": "linear", "num_timesteps": 1000},
        "optim": {"lr": lr, "warmup_steps": 100, "ema_decay": 0.999, "t_sampler": "loss_second_moment"},
        "trainer": {"max_steps": 6000, "max_time": None, "gradient_clip_val": 1.0, "limit_val_batches": 2},
        "seed": 0,
    }
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    if train is not None:
        (job / "metrics.json").write_text(json.dumps(train))
    for rel, content in (evals or {}).items():
        (job / rel).parent.mkdir(parents=True, exist_ok=True)
        (job / rel).write_text(json.dumps(content))
    return job


def fid_metrics(n: int, sampler: dict, label: str, fid: float, inception: float, std: float) -> dict:
    sfx = f"_{label}" if label else ""
    return {"num_samples": n, "sampler": sampler, "sampler_label": label or "full_chain", "fid_extractor": "digits",
            "ref_split": "train", f"fid_{n}{sfx}": fid, f"is_{n}{sfx}": inception, f"is_{n}{sfx}_std": std,
            "is_splits": 10, "fid_library": "ddpm.services.metrics (float64)", "images_per_second": 55.0}


def rows_by_objective(table: str) -> dict[str, list[str]]:
    out = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        # a row is "name (mean/variance/loss[/weight])" with its steps; the header's steps cell is "steps"
        if len(cells) == 9 and cells[2] != "steps" and re.match(r"\w+ \(\w+(/\w+){2,}\)", cells[1]):
            out[cells[1].split(" ")[0]] = cells
    return out


def legend(table: str) -> dict[str, str]:
    return {line[3]: line[6:] for line in table.splitlines() if line.startswith("- [")}


def test_every_column_from_known_metrics(tmp_path, capsys):
    simple = {"mean_type": "eps", "var_type": "fixed_large", "loss_type": "mse"}
    eps_l = {"mean_type": "eps", "var_type": "fixed_large", "loss_type": "kl"}
    mu_l = {"mean_type": "mu", "var_type": "learned", "loss_type": "kl"}
    write_job(tmp_path, "0", simple, train={"global_step": 6000, "val/bpd": 4.34, "digits/fid": 5.5,
                                             "final_samples": 256, "final_sampler": "respaced100"}, evals={
        "eval/fid500_respaced100/metrics.json": fid_metrics(500, SAMPLER, "respaced100", 7.68, 5.96, 0.12),
        "eval/fid500_full/metrics.json": fid_metrics(500, FULL_CHAIN, "", 6.5, 6.1, 0.2),
        "eval/nll_test64/nll.json": {"bpd": 4.82, "bpd_sem": 0.031, "num_images": 64, "split": "test",
                                     "num_timesteps": 1000},
        "eval/nll_test16/nll.json": {"bpd": 9.99, "num_images": 16, "split": "test", "num_timesteps": 1000},
    })
    # no evaluation: NLL falls back to the training estimate, FID to the run's final-sample score
    write_job(tmp_path, "1", eps_l, train={"global_step": 6000, "val/bpd": 3.88, "digits/fid": 19.78,
                                            "final_samples": 256, "final_sampler": SAMPLER})  # as train.py writes it
    write_job(tmp_path, "2", mu_l, train={"global_step": 5999}, evals={
        "eval/fid500_respaced100/metrics.json": fid_metrics(500, SAMPLER, "respaced100", 25.0, 4.0, 0.3),
    })
    table = main([f"multirun_dir={tmp_path}", f"out={tmp_path / 'table.md'}"])
    assert (tmp_path / "table.md").read_text().strip() == table.strip()
    assert capsys.readouterr().out.strip() == table.strip()
    rows = rows_by_objective(table)
    letters = legend(table)
    by_text = {v: k for k, v in letters.items()}

    def letter(*needles: str) -> str:
        hits = [k for k, v in letters.items() if all(n in v for n in needles)]
        assert len(hits) == 1, (needles, letters)
        return hits[0]

    a = letter("FID: sample.py, 500 samples, respaced sampler, 100 steps", "digits features, against the train")
    a_is = letter("IS: sample.py, 500 samples, respaced sampler, 100 steps", "digits features, 10 splits")
    full = letter("FID: sample.py, 500 samples, ancestral sampler, 1000 steps")
    full_is = letter("IS: sample.py, 500 samples, ancestral sampler, 1000 steps", "10 splits")
    nll = letter("NLL: ≤ the full bound", "test split, 64 images", "1000 terms")
    val = letter("NLL: the training run's val/bpd", "2 validation batch(es)")
    final = letter("FID: train.py's final samples, 256 samples, respaced sampler, 100 steps")
    assert len(by_text) == len(letters) == 7  # each protocol defined once

    s = rows["simple"]
    assert s[1] == "simple (eps/fixed_large/mse)" and s[2] == "6000"
    assert s[3] == f"6.10±0.20 [{full_is}]; 5.96±0.12 [{a_is}]"  # the IS value, not is_splits=10
    assert s[4] == f"6.50 [{full}]; 7.68 [{a}]"  # sample.py's figures win over the run's own 5.5
    assert s[5] == f"4.82±0.031 [{nll}]"  # the full bound over 64 images, not val/bpd 4.34, not the 16-image one
    assert s[6:] == ["9.46±0.11", "3.17", "≤ 3.75"]

    e = rows["eps_vlb_fixed"]
    assert e[3] == "–" and e[4] == f"19.78 [{final}]" and e[5] == f"3.88 [{val}]"
    assert e[6:] == ["7.67±0.13", "13.51", "≤ 3.70"]

    m = rows["mu_vlb_learned"]
    assert m[1] == "mu_vlb_learned (mu/learned/kl)" and m[2] == "5999 of 6000, stopped early"
    assert m[3] == f"4.00±0.30 [{a_is}]" and m[4] == f"25.00 [{a}]" and m[5] == "–"
    assert m[6:] == ["7.28±0.10", "23.69", ""]

    for missing in ("mu~ prediction, L, fixed isotropic Sigma", "mu~ prediction, ‖mu~ − mu~_θ‖²",
                    "eps prediction, L, learned diagonal Sigma"):
        line = next(ln for ln in table.splitlines() if ln.startswith(f"| {missing} |"))
        assert "not run" in line
    assert "10.00" not in table
    assert "optim.lr=0.002" in table and "optim.t_sampler=loss_second_moment" in table
    assert "trainer.max_steps=6000" in table and "**Rows differ" not in table


def test_rows_that_differ_in_more_than_the_objective_are_flagged(tmp_path):
    write_job(tmp_path, "0", {"mean_type": "eps", "var_type": "fixed_large", "loss_type": "mse"}, lr=2e-3,
              train={"global_step": 10})
    write_job(tmp_path, "1", {"mean_type": "eps", "var_type": "fixed_large", "loss_type": "kl"}, lr=5e-4,
              train={"global_step": 10})
    table = main([f"multirun_dir={tmp_path}"])
    assert "**Rows differ in more than the objective:** optim.lr (0.0005, 0.002)." in table
    assert "optim.lr=" not in table


SIMPLE = {"mean_type": "eps", "var_type": "fixed_large", "loss_type": "mse"}
EPS_L = {"mean_type": "eps", "var_type": "fixed_large", "loss_type": "kl"}
MU_L = {"mean_type": "mu", "var_type": "fixed_large", "loss_type": "kl"}
MU_MSE = {"mean_type": "mu", "var_type": "fixed_large", "loss_type": "mse"}


def write_seed_set(job: Path, seed: int, images: np.ndarray, n_sets_label: str = "fid64_ancestral") -> Path:
    """A sample.py output as the report's evaluation writes it: samples.npz ([N, H, W, 3]) + metrics.json."""
    out = job / "eval" / f"{n_sets_label}_seed{seed}"
    out.mkdir(parents=True)
    np.savez(out / "samples.npz", arr_0=np.repeat(images.transpose(0, 2, 3, 1), 3, axis=-1))
    (out / "metrics.json").write_text(json.dumps({
        "num_samples": len(images), "seed": seed, "image_shape": [1, 8, 8], "sampler": FULL_CHAIN,
        "fid_extractor": "ddpm-digits", "ref_split": "train", "fid_64": 1.0, "is_64": 1.0}))
    return out


def write_nll(job: Path, bpd: np.ndarray, *, per_image: bool = True) -> None:
    out = job / "eval" / "nll_test64"
    out.mkdir(parents=True)
    (out / "nll.json").write_text(json.dumps({
        "bpd": float(bpd.mean()), "bpd_sem": float(bpd.std(ddof=1) / np.sqrt(len(bpd))), "num_images": len(bpd),
        "split": "test", "num_timesteps": 1000, "nll_seed": 0}))
    if per_image:
        np.savez(out / "nll_terms.npz", index=np.arange(len(bpd)), total_bpd=bpd)


def _noisy(x: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, sigma, x.shape)
    return np.clip(x.astype(np.float64) + noise, 0, 255).round().astype(np.uint8)


@pytest.mark.slow  # over 5 s on 2 cores: the fast tier stays under 3 minutes
def test_seed_sets_are_pooled_and_findings_are_paired(tmp_path):
    """Rows on the same seeds: the report pools each row's sets (pooled FID/IS, per-set values, confidence,
    class entropy), and states each finding from the paired per-set differences with the numbers behind it."""
    from ddpm.core.data.digits import digits_split
    from ddpm.services.metrics.digits_classifier import DigitsExtractor
    from ddpm.services.metrics.digits_score import digits_train_ref_stats, scores_from_logits
    from ddpm.services.metrics.pooled import featurise, pooled_scores

    real = digits_split("train")[0].numpy()
    base = [real[np.random.default_rng(k).choice(len(real), 64, replace=False)] for k in range(3)]  # "seeds"
    rows = {"simple": (SIMPLE, [b for b in base]),                       # real digits: the best row
            "eps_vlb_fixed": (EPS_L, [_noisy(b, 40, k) for k, b in enumerate(base)]),
            "mu_vlb_fixed": (MU_L, [_noisy(b, 90, k) for k, b in enumerate(base)]),
            "mu_mse": (MU_MSE, [_noisy(b, 90, k) for k, b in enumerate(base)])}  # identical to mu_vlb_fixed
    nll = np.random.default_rng(0).normal(4.4, 0.3, 64)
    for name, (objective, sets) in rows.items():
        job = write_job(tmp_path, name, objective, train={"global_step": 8000})
        for k, images in enumerate(sets):
            write_seed_set(job, k, images)
    write_nll(tmp_path / "simple", nll)
    write_nll(tmp_path / "eps_vlb_fixed", nll - 0.3 + np.random.default_rng(1).normal(0, 0.05, 64))
    write_nll(tmp_path / "mu_vlb_fixed", nll + 5, per_image=False)
    write_nll(tmp_path / "mu_mse", nll + 9, per_image=False)

    table = main([f"multirun_dir={tmp_path}", "num_boot=50"])
    letters = legend(table)
    cells = rows_by_objective(table)
    ext = DigitsExtractor()
    expected = pooled_scores([featurise(x, ext) for x in rows["simple"][1]], digits_train_ref_stats(ext),
                             ext.name)
    fid_cell = cells["simple"][4]
    value, note, letter = re.fullmatch(r"([0-9.]+) \((.*)\) \[([a-z])\]", fid_cell).groups()
    assert float(value) == pytest.approx(expected["fid"], abs=0.006)
    lo, hi = min(expected["fid_sets"]), max(expected["fid_sets"])
    assert note == f"{lo:.2f}–{hi:.2f} over 3 sets"
    assert letters[letter].startswith("FID: pooled over 3 seed set(s) (seeds 0, 1, 2) of sample.py, 64 samples, "
                                      "ancestral sampler, 1000 steps")
    assert re.fullmatch(r"[0-9.]+±[0-9.]+ \([0-9.]+–[0-9.]+ over 3 sets\) \[[a-z]\]", cells["simple"][3])

    # the seed-set table: per-set FIDs, their std, IS, confidence and class entropy pooled and per set
    line = next(ln for ln in table.splitlines() if ln.startswith("| simple | 3 x 64 (seeds 0, 1, 2) |"))
    c = [x.strip() for x in line.strip("|").split("|")]
    assert c[2] == ", ".join(f"{v:.2f}" for v in expected["fid_sets"])
    assert float(c[4]) == pytest.approx(expected["fid_spread"]["std"], abs=0.006)
    pooled_digits = scores_from_logits(np.concatenate([featurise(x, ext).logits for x in rows["simple"][1]]))
    assert c[7].startswith(f"{pooled_digits['confidence']:.3f} (") and c[8].startswith(
        f"{pooled_digits['class_entropy']:.2f} (")

    # every extractor's view of the pooled sets: extractor B's figures, KID and the class mix, named
    import torch

    from ddpm.core.data import DigitsDataModule
    from ddpm.services.metrics.digits_classifier import DigitsExtractorB

    ext_b = DigitsExtractorB()
    rf = featurise(torch.cat(list(DigitsDataModule().iter_uint8("train"))), ext_b)  # the reference, as the data has it
    exp_b = pooled_scores([featurise(x, ext_b) for x in rows["simple"][1]], digits_train_ref_stats(ext_b), ext_b.name,
                          ref_features=rf)
    line_b = next(ln for ln in table.splitlines() if ln.startswith("| simple | ddpm-digits-b |"))
    cb = [x.strip() for x in line_b.strip("|").split("|")]
    assert cb[2] == f"{exp_b['fid']:.2f}" and cb[3] == f"{exp_b['fid_inf']:.2f}"
    assert cb[4] == f"{exp_b['kid']:.3g} ± {exp_b['kid_std']:.2g}" and cb[6] == f"{exp_b['fid_classmix']:.2f}"
    assert cb[5].startswith(f"{exp_b['class_kl']:.3f} (")

    def finding(prefix: str) -> str:
        hits = [ln for ln in table.splitlines() if ln.startswith(f"- {prefix}")]
        assert len(hits) == 1, (prefix, table)
        return hits[0]

    fid1 = finding("FID simple − eps_vlb_fixed, predicted < 0 (paper: FID 3.17 against 13.51): pooled -")
    per_set = re.search(r"per set (\S+), (\S+), (\S+) \(3 seed sets of 64\)", fid1).groups()
    assert all(v.startswith("-") for v in per_set) and fid1.endswith("**reproduced**")
    assert "95% paired bootstrap interval [" in fid1
    confidence = finding("digits confidence simple − eps_vlb_fixed, predicted > 0 (beyond the paper: the digits")
    assert confidence.endswith("**reproduced**")
    # both extractors' numbers, named, and the interval that covers the seed sets' spread
    assert "(ddpm-digits) | pooled -" in fid1 and fid1.count("with the seed sets' spread [-") == 2
    is_line = finding("IS simple − eps_vlb_fixed")
    assert re.search(r"\*\*(reproduced|not established)\*\*", is_line)
    # identical images: every per-set difference is 0, a tie: not established
    same = finding("FID mu_vlb_fixed − mu_mse, predicted < 0")
    assert "per set +0.000, +0.000, +0.000" in same
    assert same.endswith("**not established** (no difference to resolve at 3 seed sets of 64)")
    # the NLL: paired per test image where both rows have per-image values, else from the two standard errors
    nll2 = finding("NLL (bits/dim) eps_vlb_fixed − simple, predicted < 0")
    assert "paired per test image (64 images, the same noise seed)" in nll2 and nll2.endswith("**reproduced**")
    nll3 = finding("NLL (bits/dim) mu_vlb_fixed − mu_mse, predicted < 0")
    assert "unpaired (no per-image values)" in nll3 and nll3.endswith("**reproduced**")
    # rows that were not run are named, not guessed
    assert finding("FID simple − eps_vlb_learned").endswith("not evaluated, not run: eps_vlb_learned")
    assert "**Rows differ" not in table


@pytest.mark.slow  # over 2 s on 2 cores: the fast tier stays under 3 minutes
def test_opposite_sign_on_every_set_is_the_opposite(tmp_path):
    from ddpm.core.data.digits import digits_split

    real = digits_split("train")[0].numpy()
    # three sets: the interval must cover the spread between them (a t-interval; two sets' is 12.7 sd wide)
    base = [real[np.random.default_rng(k).choice(len(real), 48, replace=False)] for k in range(3)]
    for name, objective, sets in (("simple", SIMPLE, [_noisy(b, 90, k) for k, b in enumerate(base)]),
                                  ("eps_vlb_fixed", EPS_L, base)):
        job = write_job(tmp_path, name, objective, train={"global_step": 8000})
        for k, images in enumerate(sets):
            write_seed_set(job, k, images)
    table = main([f"multirun_dir={tmp_path}", "num_boot=20"])
    line = next(ln for ln in table.splitlines() if ln.startswith("- FID simple − eps_vlb_fixed"))
    assert "(3 seed sets of 48)" in line and line.endswith("**the opposite**")


def test_evaluate_samples_each_seed_set_in_its_own_resumable_run(tmp_path, monkeypatch):
    """``evaluate=true``: one sample.py run per seed set (seed=k) and one NLL run per finished row; a rerun skips
    every finished output and redoes only what is missing, set by set."""
    import ddpm.commands.report as report

    job = write_job(tmp_path, "simple", SIMPLE, train={"global_step": 8000})
    (job / "checkpoints").mkdir()
    (job / "checkpoints" / "last.ckpt").write_bytes(b"x")
    write_job(tmp_path, "eps_vlb_fixed", EPS_L)  # still training: no metrics.json, no checkpoint
    stopped = write_job(tmp_path, "mu_vlb_fixed", MU_L, train={"global_step": 231})  # preempted: SIGTERM at 231
    (stopped / "checkpoints").mkdir()
    (stopped / "checkpoints" / "last.ckpt").write_bytes(b"x")
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        args = dict(a.split("=", 1) for a in cmd[2:] if "=" in a)
        out = Path(args["out_dir"])
        out.mkdir(parents=True, exist_ok=True)
        (out / ("nll.json" if "ddpm.nll" in cmd else "metrics.json")).write_text("{}")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(report.subprocess, "run", fake_run)
    from ddpm.core.config import compose

    opts = report.options(compose("report", [f"multirun_dir={tmp_path}", "evaluate=true", "seed_sets=3",
                                             "fid_samples=512"]))
    report.evaluate_jobs(opts)
    assert len(calls) == 4 and not any(str(stopped) in " ".join(c) for c in calls)
    assert "| mu_vlb_fixed (mu/fixed_large/kl) | 231 of 6000, stopped early |" in main([f"multirun_dir={tmp_path}"])
    for k, cmd in enumerate(calls[:3]):
        assert f"seed={k}" in cmd and "num_samples=512" in cmd and "compute_fid=true" in cmd
        assert f"out_dir={job / 'eval' / f'fid512_ancestral_seed{k}'}" in cmd
    assert calls[3][1:3] == ["-m", "ddpm.nll"] and "max_images=64" in calls[3] and "split=test" in calls[3]
    calls.clear()
    report.evaluate_jobs(opts)
    assert calls == []
    (job / "eval" / "fid512_ancestral_seed1" / "metrics.json").unlink()  # a killed run: set 1 never finished
    report.evaluate_jobs(opts)
    assert len(calls) == 1 and "seed=1" in calls[0]


def _evaluation_calls(tmp_path, monkeypatch, data_target: str, *overrides: str) -> list[dict[str, str]]:
    """The sample.py command lines ``evaluate=true`` runs for one finished row on ``data_target``."""
    import ddpm.commands.report as report
    from ddpm.core.config import compose

    job = write_job(tmp_path, "simple", SIMPLE, train={"global_step": 6000})
    cfg_file = job / ".hydra" / "config.yaml"
    cfg = yaml.safe_load(cfg_file.read_text())
    cfg["data"]["_target_"] = data_target
    cfg_file.write_text(yaml.safe_dump(cfg))
    (job / "checkpoints").mkdir()
    (job / "checkpoints" / "last.ckpt").write_bytes(b"x")
    calls = []

    def fake_run(cmd, **kw):
        calls.append(dict(a.split("=", 1) for a in cmd[2:] if "=" in a))
        out = Path(calls[-1]["out_dir"])
        out.mkdir(parents=True, exist_ok=True)
        (out / ("nll.json" if "ddpm.nll" in cmd else "metrics.json")).write_text("{}")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(report.subprocess, "run", fake_run)
    report.evaluate_jobs(report.options(compose("report", [f"multirun_dir={tmp_path}", "evaluate=true",
                                                           *overrides])))
    return calls


def test_cifar10_rows_are_evaluated_with_the_papers_protocol(tmp_path, monkeypatch):
    """issue 30 item 2: on CIFAR-10 ``evaluate=true`` alone is the paper's protocol: one set of 50k samples from
    the full chain scored with Inception (sample.py's fid.feature_extractor=auto on CIFAR-10), the NLL bound on the
    whole test split; ``devices=N`` spreads each of those sample.py runs over N devices."""
    calls = _evaluation_calls(tmp_path, monkeypatch, "ddpm.core.data.CIFAR10DataModule", "devices=8")
    assert len(calls) == 2
    fid, nll = calls
    assert fid["num_samples"] == "50000" and fid["seed"] == "0" and fid["compute_fid"] == "true"
    assert fid["sampler"] == "ancestral" and fid["sampler.steps"] == "null"  # the full 1000-step chain
    assert "fid.feature_extractor" not in fid  # auto: Inception for CIFAR-10 (ddpm.services.metrics.samples)
    assert nll["split"] == "test" and nll["max_images"] == "null"  # python -m ddpm.nll
    assert fid["trainer.devices"] == nll["trainer.devices"] == "8"
    assert nll["out_dir"].endswith("nll_testall") and fid["out_dir"].endswith("fid50000_ancestral_seed0")


def test_a_setting_on_the_command_line_wins_over_the_data_protocol(tmp_path, monkeypatch):
    calls = _evaluation_calls(tmp_path, monkeypatch, "ddpm.core.data.CIFAR10DataModule", "fid_samples=16", "seed_sets=2")
    assert [(c.get("num_samples"), c.get("seed")) for c in calls[:2]] == [("16", "0"), ("16", "1")]
    assert calls[2]["max_images"] == "null" and calls[0]["trainer.devices"] == "1"


def test_other_data_keep_the_miniature_protocol(tmp_path, monkeypatch):
    calls = _evaluation_calls(tmp_path, monkeypatch, "ddpm.core.data.ImageFolderDataModule")
    assert [c.get("num_samples") for c in calls] == ["512", "512", "512", None]
    assert calls[3]["max_images"] == "64"


def test_rows_evaluates_and_reports_only_the_chosen_rows(tmp_path, monkeypatch):
    """``rows=[...]``: one report process per row evaluates rows in parallel; the others are left alone, a
    mistyped row names the valid ones, and a row with no job names the rows there are."""
    import ddpm.commands.report as report
    from ddpm.core.config import compose

    jobs = {}
    for name, obj in (("simple", SIMPLE), ("mu_vlb_fixed", MU_L)):
        jobs[name] = write_job(tmp_path, name, obj, train={"global_step": 6000})
        (jobs[name] / "checkpoints").mkdir()
        (jobs[name] / "checkpoints" / "last.ckpt").write_bytes(b"x")
    calls = []

    def fake_run(cmd, **kw):  # sample.py writes its output
        calls.append(" ".join(cmd))
        out = Path(dict(a.split("=", 1) for a in cmd[2:] if "=" in a)["out_dir"])
        out.mkdir(parents=True, exist_ok=True)
        (out / ("nll.json" if "ddpm.nll" in cmd else "metrics.json")).write_text("{}")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(report.subprocess, "run", fake_run)

    def evaluate(rows: str) -> list[str]:
        calls.clear()
        report.evaluate_jobs(report.options(compose("report", [f"multirun_dir={tmp_path}", "evaluate=true",
                                                               f"rows={rows}"])))
        return list(calls)

    ran = evaluate("[mu_vlb_fixed]")  # 3 seed sets + the NLL, of that row only
    assert len(ran) == 4 and all(f"ckpt_path={jobs['mu_vlb_fixed']} " in c for c in ran)
    ran = evaluate("[simple,mu_vlb_fixed]")  # the other row's are done: only simple's run
    assert len(ran) == 4 and all(f"ckpt_path={jobs['simple']} " in c for c in ran)
    assert evaluate("[simple]") == []
    table = main([f"multirun_dir={tmp_path}", "rows=[simple]"])
    assert "| simple (eps/fixed_large/mse) |" in table and "| mu_vlb_fixed (" not in table
    with pytest.raises(ValueError, match=r"rows: 'mu_vlb_fixd' is not a Table 2 row; valid: .*mu_vlb_fixed"):
        report.options(compose("report", [f"multirun_dir={tmp_path}", "rows=[mu_vlb_fixd]"]))
    with pytest.raises(FileNotFoundError, match=r"no such job under .*; its rows: mu_vlb_fixed, simple"):
        main([f"multirun_dir={tmp_path}", "rows=[mu_mse]"])


def test_help_documents_the_seed_sets():
    """``python -m ddpm.report --help``: every option with its default and comment (conf/report.yaml)."""
    from ddpm.core.cli import help_text

    text = help_text("report", [])
    assert text.startswith("python -m ddpm.report [KEY=VALUE ...]")
    assert "\nseed_sets: null  # seed sets per row (sample.py seed=0..K-1): FID/IS pooled over them" in text
    assert "\nfid_samples: null  # images per seed set\n" in text and "\nnum_boot: 200  # paired bootstrap" in text
    assert "\ndevices: 1  # each evaluation (one sample.py run) spreads over this many devices" in text
    assert "seed_sets=3" not in text  # an override changes the value shown, the comment stays:
    assert "\nseed_sets: 5  # seed sets per row" in help_text("report", ["seed_sets=5"])
    assert "multirun_dir: ???" in text and "\nsampler: ancestral, " in text  # the sampler group's options


def test_bad_options_are_one_clean_error_naming_the_key(tmp_path, capsys, monkeypatch):
    from ddpm.core import cli

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    for argv, needle in (([], "multirun_dir=PATH is required"),
                         ([f"multirun_dir={tmp_path / 'nope'}"], "not a directory"),
                         ([f"multirun_dir={tmp_path}", "seed_sets=0"], "seed_sets=0 is not valid"),
                         ([f"multirun_dir={tmp_path}", "num_boot=0"], "num_boot=0 is not valid"),
                         ([f"multirun_dir={tmp_path}", "devices=0"], "devices=0 is not valid"),
                         ([f"multirun_dir={tmp_path}", "protocols.cifar10.fid_samples=1"],
                          "protocols.cifar10.fid_samples=1 is not valid")):
        with pytest.raises(SystemExit) as info, cli.user_errors():
            main(argv)
        assert info.value.code == 1 and needle in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.preflight("report", ["seed_set=2"])
    err = capsys.readouterr().err
    assert err.startswith("Error: seed_set: no such option of python -m ddpm.report. Did you mean 'seed_sets'?")


@pytest.mark.slow
def test_the_whole_table_in_two_commands_and_a_rerun_does_nothing(tmp_path):
    """The README's two commands on a tiny version (two rows, 3 steps, T=10): the sweep trains every row into
    <sweep dir>/<objective>, report evaluate=true writes two seed sets and the full NLL of each, and the report shows
    the pooled figures and the paired comparisons;
    running both commands again trains and evaluates nothing (nothing is rewritten)."""
    sweep = tmp_path / "t2"
    tiny = ["trainer.max_steps=3", "diffusion.num_timesteps=10", "final_samples=8", "data.batch_size=16",
            "trainer.limit_val_batches=0", "callbacks.model_checkpoint.every_n_train_steps=0", *TINY_MODEL]
    train_cmd = [str(ROOT / "train.py"), "-m", "sweep=table2_digits", "objective=simple,mu_vlb_learned",
                 f"hydra.sweep.dir={sweep}", *tiny]
    report_cmd = [sys.executable, "-m", "ddpm.report", f"multirun_dir={sweep}", "evaluate=true", "seed_sets=2",
                  "fid_samples=8", "nll_images=4", "batch_size=8", "num_boot=10", f"hydra.run.dir={tmp_path}/rep"]
    run_cli(train_cmd, cwd=tmp_path)
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["mu_vlb_learned", "simple"]
    proc = run_python(report_cmd[1:], tmp_path, 600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = rows_by_objective(proc.stdout)
    letters = legend(proc.stdout)
    for name in ("simple", "mu_vlb_learned"):
        row = rows[name]
        assert row[2] == "3"
        pooled = "pooled over 2 seed set(s) (seeds 0, 1) of sample.py, 8 samples, ancestral sampler, 10 steps"
        for cell, what in ((row[3], f"IS: {pooled}"), (row[4], f"FID: {pooled}"),
                           (row[5], "NLL: ≤ the full bound from python -m ddpm.nll, test split, 4 images")):
            m = re.fullmatch(r"([0-9.]+)(?:±[0-9.]+)?(?: \(.* over 2 sets\))? \[([a-z])\]", cell)
            assert m, (cell, proc.stdout)
            value, letter = m.groups()
            assert float(value) > 0 and letters[letter].startswith(what), (cell, letters[letter])
    table = proc.stdout
    assert sum("| not run |" in line for line in table.splitlines()) == 4
    # the findings between the two rows: mu_vlb_learned - simple is a paired comparison on both seed sets
    line = next(ln for ln in table.splitlines() if ln.startswith("- FID simple − mu_vlb_learned"))
    assert "(2 seed sets of 8)" in line and re.search(r": \*\*(reproduced|the opposite|extractor-dependent|not "
                                                      r"established)\*\*", line)
    # both digits extractors, named, in the findings and in the per-extractor table (KID, FID∞, the class mix)
    assert "(ddpm-digits) | pooled" in line and "(ddpm-digits-b): **" in line
    assert {r[1] for r in (ln.strip("|").split(" | ") for ln in table.splitlines()
                           if ln.startswith("| simple | ddpm-digits"))} == {"ddpm-digits", "ddpm-digits-b"}

    outputs = sorted(p for p in sweep.rglob("*") if p.is_file() and p.suffix in (".json", ".ckpt", ".npz"))
    before = {p: p.stat().st_mtime_ns for p in outputs}
    again = run_cli(train_cmd, cwd=tmp_path)
    assert (again.stdout + again.stderr).count("nothing to do") == 2
    proc = run_python(report_cmd[1:], tmp_path, 600)
    assert proc.returncode == 0 and proc.stderr.count("exists, skipped") == 6, proc.stderr[-2000:]
    assert proc.stdout == table
    assert {p: p.stat().st_mtime_ns for p in outputs} == before


def test_an_unresolved_comparison_says_what_budget_would_resolve_it():
    from ddpm.commands.report.render import _budget
    from ddpm.services.metrics.pooled import REPRODUCED, UNRESOLVED

    r = {"verdict": UNRESOLVED, "interval": (-1.0, 0.5), "pooled": -0.25, "units": (3, "seed sets of 512")}
    assert "about 27 seed sets of 512 would make the interval exclude 0: an extrapolation" in _budget(r)
    assert _budget({**r, "verdict": REPRODUCED}) == ""
    # two extractors: the one furthest from excluding 0 sets the budget
    two = {**r, "extractors": {"A": {"interval": (-1.0, 0.5), "pooled": -0.25},
                               "B": {"interval": (-2.0, 1.0), "pooled": -0.25}}}
    assert "about 108 seed sets of 512" in _budget(two)


def test_subset_fid_scores_the_first_images_of_each_seed_set(tmp_path, capsys, monkeypatch):
    """``bench/subset_fid.py``: the FID/IS of the first N images of each seed set, as the report scores them (the
    check that a model is the one an earlier single-set report measured)."""
    import runpy

    from ddpm.core.data.digits import digits_split
    from ddpm.services.metrics.digits_classifier import DigitsExtractor, DigitsExtractorB
    from ddpm.services.metrics.digits_score import digits_train_ref_stats
    from ddpm.services.metrics.fid import compute_fid_is
    from ddpm.services.metrics.pooled import featurise

    real = digits_split("train")[0].numpy()
    sets = [_noisy(real[np.random.default_rng(k).choice(len(real), 64, replace=False)], 30, k) for k in range(2)]
    job = write_job(tmp_path, "simple", SIMPLE, train={"global_step": 8000})
    for k, images in enumerate(sets):
        write_seed_set(job, k, images)
    monkeypatch.setattr(sys, "argv", ["subset_fid.py", str(job), "--n", "40"])
    runpy.run_path(str(ROOT / "bench" / "subset_fid.py"), run_name="__main__")
    lines = capsys.readouterr().out.splitlines()
    def fid_by_hand(images: np.ndarray, ext, ref) -> float:
        """Frechet distance in float64 from the features' mean and covariance; tr sqrt(S1 S2) from the
        eigenvalues of S1 S2 (not scipy's sqrtm, which the scorer uses)."""
        f = featurise(images, ext).features
        mu, cov = f.mean(axis=0), np.cov(f, rowvar=False)
        tr_sqrt = np.sqrt(np.linalg.eigvals(cov @ ref.sigma).astype(np.complex128)).real.sum()
        return float(((mu - ref.mu) ** 2).sum() + np.trace(cov) + np.trace(ref.sigma) - 2 * tr_sqrt)

    assert len(lines) == 4  # two sets, each under digits extractors A and B, named
    for ext in (DigitsExtractor(), DigitsExtractorB()):
        ref = digits_train_ref_stats(ext)
        mine = [ln for ln in lines if f"({ext.name};" in ln]
        assert len(mine) == 2
        for k, line in enumerate(mine):
            fid = fid_by_hand(sets[k][:40], ext, ref)
            is_ = compute_fid_is(sets[k][:40], ref, ext)["is_40"]  # sample.py's scorer, not the pooled one
            assert f"seed set {k}: first 40 images FID {fid:.2f}, IS {is_:.2f}" in line, (line, fid, is_)
            assert f"FID {fid_by_hand(sets[k][24:64], ext, ref):.2f}," not in line  # other images would not pass
