"""``python -m ddpm.report``: every column read from known metrics files in hand-built job directories."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TINY_MODEL, cli_env, run_cli

from ddpm.report import main

SAMPLER = {"name": "respaced", "steps": 100, "eta": None, "clip_denoised": True, "var_type": None}
FULL_CHAIN = {"name": "ancestral", "steps": 1000, "eta": None, "clip_denoised": True, "var_type": None}


def write_job(root: Path, name: str, objective: dict, *, lr: float = 2e-3, train: dict | None = None,
              evals: dict[str, dict] | None = None) -> Path:
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    cfg = {
        "objective": objective,
        "data": {"_target_": "ddpm.data.DigitsDataModule", "batch_size": 128},
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
            "is_splits": 10, "fid_library": "ddpm.metrics (float64)", "images_per_second": 55.0}


def rows_by_objective(table: str) -> dict[str, list[str]]:
    out = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 9 and "(" in cells[1]:
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
    table = main([str(tmp_path), "--out", str(tmp_path / "table.md")])
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
    assert m[1] == "mu_vlb_learned (mu/learned/kl)" and m[2] == "5999"
    assert m[3] == f"4.00±0.30 [{a_is}]" and m[4] == f"25.00 [{a}]" and m[5] == "–"
    assert m[6:] == ["7.28±0.10", "23.69", ""]

    for missing in ("mu~ prediction, L, fixed isotropic Sigma", "mu~ prediction, ‖mu~ − mu~_θ‖²",
                    "eps prediction, L, learned diagonal Sigma"):
        line = next(ln for ln in table.splitlines() if ln.startswith(f"| {missing} |"))
        assert "not run" in line
    assert "10.00" not in table
    assert "optim.lr=0.002" in table and "optim.t_sampler=loss_second_moment" in table
    assert "trainer.max_steps=6000" in table and "differ" not in table


def test_rows_that_differ_in_more_than_the_objective_are_flagged(tmp_path):
    write_job(tmp_path, "0", {"mean_type": "eps", "var_type": "fixed_large", "loss_type": "mse"}, lr=2e-3,
              train={"global_step": 10})
    write_job(tmp_path, "1", {"mean_type": "eps", "var_type": "fixed_large", "loss_type": "kl"}, lr=5e-4,
              train={"global_step": 10})
    table = main([str(tmp_path)])
    assert "**Rows differ in more than the objective:** optim.lr (0.0005, 0.002)." in table
    assert "optim.lr=" not in table


@pytest.mark.slow
def test_the_whole_table_in_two_commands_and_a_rerun_does_nothing(tmp_path):
    """The README's two commands on a tiny version (two rows, 3 steps, T=10): the sweep trains every row into
    <sweep dir>/<objective>, report --evaluate writes FID/IS and the full NLL of each, and the report shows them;
    running both commands again trains and evaluates nothing (nothing is rewritten)."""
    sweep = tmp_path / "t2"
    tiny = ["trainer.max_steps=3", "diffusion.num_timesteps=10", "final_samples=8", "data.batch_size=16",
            "trainer.limit_val_batches=0", "callbacks.model_checkpoint.every_n_train_steps=0", *TINY_MODEL]
    train_cmd = [str(ROOT / "train.py"), "-m", "sweep=table2_digits", "objective=simple,mu_vlb_learned",
                 f"hydra.sweep.dir={sweep}", *tiny]
    report_cmd = [sys.executable, "-m", "ddpm.report", str(sweep), "--evaluate", "--fid-samples", "8",
                  "--nll-images", "4", "--batch-size", "8"]
    run_cli(train_cmd, cwd=tmp_path)
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["mu_vlb_learned", "simple"]
    proc = subprocess.run(report_cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=cli_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = rows_by_objective(proc.stdout)
    letters = legend(proc.stdout)
    for name in ("simple", "mu_vlb_learned"):
        row = rows[name]
        assert row[2] == "3"
        for cell, what in ((row[3], "IS: sample.py, 8 samples, ancestral sampler, 10 steps"),
                           (row[4], "FID: sample.py, 8 samples, ancestral sampler, 10 steps"),
                           (row[5], "NLL: ≤ the full bound from sample.py nll=true, test split, 4 images")):
            value, letter = re.fullmatch(r"([0-9.]+)(?:±[0-9.]+)? \[([a-z])\]", cell).groups()
            assert float(value) > 0 and letters[letter].startswith(what), (cell, letters[letter])
    table = proc.stdout
    assert sum("not run" in line for line in table.splitlines()) == 4

    outputs = sorted(p for p in sweep.rglob("*") if p.is_file() and p.suffix in (".json", ".ckpt", ".npz"))
    before = {p: p.stat().st_mtime_ns for p in outputs}
    again = run_cli(train_cmd, cwd=tmp_path)
    assert (again.stdout + again.stderr).count("nothing to do") == 2
    proc = subprocess.run(report_cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=cli_env())
    assert proc.returncode == 0 and proc.stderr.count("exists, skipped") == 4, proc.stderr[-2000:]
    assert proc.stdout == table
    assert {p: p.stat().st_mtime_ns for p in outputs} == before
