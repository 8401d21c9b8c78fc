"""What a user sees: every mistake is one ``Error:`` block naming the key (exit status 1, no traceback), before
anything expensive starts; ``--help`` lists what the script takes; a normal run's console holds no warning
and no line twice. Real ``python train.py`` / ``sample.py`` processes (run two at a time), plus in-process
checks of the same rules in the fast tier."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_python, tiny_overrides
from sampling_helpers import tiny_checkpoint

from ddpm.core import cli


def run(args: list[str], cwd: Path, fresh: bool = False, **env: str):
    env = {"HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1", **env}
    return run_python(args, cwd, 600, fresh, **env)


# ------------------------------------------------------------------------------------- in-process (fast)
@pytest.mark.parametrize(
    "script,argv,needles",
    [
        ("train", ["optim.lr=-1"], ["optim.lr=-1", "positive number"]),
        ("train", ["seed=-1"], ["seed=-1", "[0, 2**32 - 1]"]),
        ("train", ["trainer.max_steps=abc"], ["trainer.max_steps='abc'", "integer"]),
        ("train", ["trainer.max_stpes=5"], ["trainer.max_stpes", "Did you mean 'trainer.max_steps'"]),
        ("train", ["data=cifar100"], ["data=cifar100", "cifar10", "digits"]),
        # a true/false setting given another word: the string would read as true
        ("train", ["data.random_flip=flase"], ["data.random_flip='flase' is not valid", "true or false"]),
        ("sample", ["sampler.clip_denoised=maybe"], ["sampler.clip_denoised='maybe' is not valid", "true or false"]),
        ("figures", ["figure.name=shared_xt"], ["figure.name='shared_xt' is not valid", "figure=shared_xt"]),
        ("train", ["data=image_folder"], ["data.root is required", "data.root=/path/to/images",
                                          "conf/data/image_folder.yaml"]),  # was OmegaConf's traceback
        # an optional group (conf/train.yaml's `optional sweep`): Hydra alone would run the default silently
        ("train", ["sweep=tabel2"], ["sweep=tabel2: no such option", "table2_digits", "Did you mean 'table2'"]),
        ("train", ["-m", "sweep=tabel2_digits"], ["sweep=tabel2_digits", "Did you mean 'table2_digits'"]),
        # what the trained model allows is refused before training, not after it (steps against T)
        ("train", ["sampler.steps=2000"], ["sampler.steps=2000 exceeds the model's T=1000"]),
        ("train", ["diffusion.num_timesteps=100"], ["sampler.steps=200 exceeds the model's T=100"]),
        # a T that is not one is named itself, not as a sampler.steps above it
        ("train", ["diffusion.num_timesteps=0"], ["diffusion.num_timesteps=0 is not valid", "integer >= 1"]),
        ("train", ["trainer.devices=0"], ["trainer.devices=0 is not valid", "an integer >= 1, -1 (every device)"]),
        ("train", ["optim.fused=maybe"], ["optim.fused='maybe' is not valid", "true or false"]),
        ("train", ["callbacks.sample_grid.sampler.steps=50"], ["callbacks.sample_grid.sampler is ${sampler}",
                                                               "set sampler.steps=...", "its own node"]),
        ("train", ["final_sampler.steps=5"], ["final_sampler.steps", "use sampler.steps"]),
        ("train", ["nan_policy=maybe"], ["nan_policy='maybe' is not valid", "stop | skip"]),
        ("train", ["hydra.run.dir=/dev/null/run"], ["hydra.run.dir=", "not a folder"]),
        ("sample", ["steps=5"], ["steps=...", "sampler.steps"]),
        ("sample", ["num_samples=abc"], ["num_samples='abc' is not valid", "an integer >= 1"]),
        ("sample", ["sampler=ddm"], ["sampler=ddm", "ancestral, ddim", "Did you mean 'ddim'"]),
        ("sample", ["sampler=ddim", "sampler.steps=0"], ["sampler.steps >= 1"]),
        ("sample", ["sampler=restart", "sampler.steps=0"], ["sampler=restart needs sampler.steps >= 1"]),
        ("sample", ["sampler=restart", "sampler.restart_k=0"], ["sampler.restart_k=0", "integer >= 1"]),
        ("sample", ["sampler=restart", "sampler.restart_t_min=400"], ["sampler.restart_t_min=400",
                                                                       "0 < restart_t_min < restart_t_max"]),
        ("sample", ["sampler=restart", "sampler.restart_share=2"], ["sampler.restart_share=2", "(0, 1)"]),
        ("sample", ["sampler=ddim", "sampler.eta=-1"], ["sampler.eta=-1.0 must be >= 0"]),
        ("sample", ["sampler=restrat"], ["sampler=restrat", "dpm_solver_sde", "Did you mean 'restart'"]),
        ("sample", ["sampler=dpm_solver_sde", "sampler.eta=0.5"], ["sampler.eta is not a setting of "
                                                                   "sampler=dpm_solver_sde; valid: sampler.name"]),
        ("train", ["sampler=ddim", "sampler.restart_k=1"], ["sampler.restart_k is not a setting of sampler=ddim",
                                                            "sampler.eta"]),
        ("sample", ["fid.feature_extractr=digits"], ["Did you mean 'fid.feature_extractor'"]),
        # a setting under a node the command does not have: the node is named (was "Valid keys under diffusion: .")
        ("sample", ["diffusion.num_timesteps=10"], ["it has no diffusion settings", "the checkpoint's own",
                                                    "Valid keys at the top level: ckpt_path"]),
        ("nll", ["model.ch=64"], ["it has no model settings", "the checkpoint's own"]),
        ("sample", ["sampler.foo.bar=1"], ["it has no sampler.foo settings", "Valid keys under sampler: sampler.name"]),
        ("report", ["model.ch=3"], ["python -m ddpm.report: it has no model settings. Valid keys at the top level"]),
        # every command that takes settings answers the same way (issue 21)
        ("figures", ["figure=foo"], ["figure=foo", "interpolation, progressive, shared_xt"]),
        ("figures", ["figure.frame=3"], ["figure.frame: no such option of python -m ddpm.figures",
                                         "Did you mean 'figure.frames'", "Valid keys under figure: figure.name"]),
        ("figures", ["sampler=ddm"], ["sampler=ddm", "Did you mean 'ddim'"]),
        ("figures", ["figure=interpolation", "figure.t=abc"], ["figure.t='abc' is not valid", "0..1000"]),
        ("build_refstats", ["splt=test"], ["splt: no such option of python -m ddpm.build_refstats",
                                           "Did you mean 'split'", "Valid keys at the top level: task_name, split"]),
        ("build_refstats", ["data=cifar100"], ["data=cifar100", "cifar10"]),
        ("frontier", ["num_sample=5"], ["Did you mean 'num_samples'", "Valid keys at the top level"]),
        # the NLL bound is its own command (issue 27): sample.py points there
        ("sample", ["nll=true"], ["nll=... is not an option of python sample.py", "python -m ddpm.nll ckpt_path=RUN"]),
        ("sample", ["nll_max_images=5"], ["nll_max_images=...", "python -m ddpm.nll max_images=..."]),
        ("nll", ["nll_split=train"], ["nll_split=...", "python -m ddpm.nll split=..."]),
    ],
)
@pytest.mark.slow  # over 2 s on 2 cores: the fast tier stays under 3 minutes
def test_preflight_refuses_with_one_clean_message(script, argv, needles, capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as info:
        cli.preflight(script, argv)
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in err, err


@pytest.mark.slow  # a composition: over 2 s on 2 cores
def test_a_mistyped_key_is_not_told_to_mean_its_own_parent(capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit):
        cli.preflight("sample", ["fid.foo=1"])
    err = capsys.readouterr().err
    assert "Valid keys under fid: fid.feature_extractor" in err and "Did you mean 'fid'?" not in err, err


def test_a_sweep_on_the_search_path_is_valid_and_its_typo_lists_it(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "mine.yaml").write_text("# @package _global_\nhydra:\n  sweeper:\n    params:\n"
                                                  "      seed: 0,1\n")
    path = f"hydra.searchpath=[file://{tmp_path}]"
    assert cli.preflight("train", [path, "sweep=mine"]) is None
    with pytest.raises(SystemExit):
        cli.preflight("train", [path, "sweep=mien"])
    err = capsys.readouterr().err
    assert "sweep=mien: no such option" in err and "mine, objectives_digits" in err and "Did you mean 'mine'" in err


def test_lightning_refusing_a_trainer_setting_is_one_user_error_naming_trainer(tmp_path):
    from ddpm.core.config import compose
    from ddpm.services.builders import build_trainer

    cfg = compose("train", ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=[0,1]",
                            f"paths.output_dir={tmp_path}"])
    with pytest.raises(ValueError, match=r"^trainer: .*devices.* \(trainer.accelerator=cpu, trainer.devices=\[0, 1\]"):
        build_trainer(cfg, [], [])
    assert cli.user_message(ValueError("trainer: x")) == "trainer: x"
    if not torch.cuda.is_available():  # trainer=gpu on a machine without one: the way back to its CPU
        with pytest.raises(ValueError, match=r"^trainer: .*no CUDA GPU: trainer=default .* or trainer=cpu"):
            build_trainer(compose("train", ["trainer=gpu", f"paths.output_dir={tmp_path}"]), [], [])


def test_preflight_lets_a_good_command_through_and_sweeps_to_hydra(monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    assert cli.preflight("train", ["optim.lr=1e-3", "sampler=ddim", "sampler.steps=50"]) is None
    assert cli.preflight("train", ["data.random_flip=true", "paths.output_dir=/tmp/x", "hydra.run.dir=/tmp/y",
                                   "trainer.deterministic=warn", "callbacks.model_checkpoint.save_last=link",
                                   "trainer.devices=-1"]) is None
    assert cli.preflight("train", ["logger=wandb", "logger.wandb.log_model=all"]) is None
    assert cli.preflight("train", ["-m", "objective=simple,mu_mse"]) is None
    assert cli.preflight("sample", ["data=digits", "data.batch_size=4", "fid.feature_extractor=digits"]) is None


@pytest.mark.parametrize("argv,needles", [
    (["-m", "sweep=table2_digits", "optim.lrr=1"], ["optim.lrr: no such option", "Did you mean 'optim.lr'"]),
    (["--multirun", "objective=simple,simpel"], ["objective=simpel: no such option", "Did you mean 'simple'"]),
    (["-m", "objective=simple,mu_mse", "optim.lr=1e-3,-1"], ["optim.lr=-1", "positive number"]),
    (["-m", "sweep=table2", "data=cifar10", "trainer=ddp", "trainer.devics=8"], ["Did you mean 'trainer.devices'"]),
])
def test_a_mistyped_option_in_a_multirun_is_the_same_one_line_error(argv, needles, capsys, monkeypatch):
    """issue 30 item 3: a sweep's command line is composed job by job (every swept value once) before Hydra
    starts the first job, with the single run's message; never Hydra's "+key=value" advice for a typo."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as info:
        cli.preflight("train", argv)
    err = capsys.readouterr().err
    assert info.value.code == 1 and err.startswith("Error: ") and "Traceback" not in err, err
    assert [ln.startswith("Error: ") for ln in err.splitlines()].count(True) == 1, err
    assert "+optim.lrr" not in err and "Could not override" not in err, err
    for needle in needles:
        assert needle in err, err


def test_sweep_variants_compose_every_swept_value_once():
    jobs = cli.sweep_variants(["sweep=table2", "objective=simple,mu_mse,hybrid", "seed=0,1", "+x=1"])
    assert jobs == [["sweep=table2", "objective=simple", "seed=0", "+x=1"],
                    ["sweep=table2", "objective=mu_mse", "seed=0", "+x=1"],
                    ["sweep=table2", "objective=hybrid", "seed=0", "+x=1"],
                    ["sweep=table2", "objective=simple", "seed=1", "+x=1"]]
    assert cli.sweep_variants(['paths.output_dir="a b",c']) == [['paths.output_dir="a b"'], ["paths.output_dir=c"]]


@pytest.mark.slow
def test_a_multirun_typo_stops_before_any_job(tmp_path):
    """The real command of issue 30: one Error line, exit 1, and no job directory made."""
    sweep_dir = tmp_path / "sweep"
    proc = run([str(ROOT / "train.py"), "-m", "sweep=table2_digits", "optim.lrr=1", f"hydra.sweep.dir={sweep_dir}"],
               tmp_path)
    _clean_error(proc, "optim.lrr: no such option", "Did you mean 'optim.lr'")
    assert "+optim.lrr" not in proc.stderr and not sweep_dir.exists()


def test_a_bug_keeps_its_traceback_and_debug_shows_user_errors(monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(KeyError), cli.user_errors():
        raise KeyError("a bug, not the user's mistake")
    monkeypatch.setenv("DDPM_DEBUG", "1")
    with pytest.raises(ValueError), cli.user_errors():
        raise ValueError("shown with its traceback under DDPM_DEBUG=1")


@pytest.mark.parametrize("script,groups,absent", [
    ("train", ["data:", "model:", "objective:", "sampler:", "callbacks:"], ["schema", "recipe:", "checkpoint"]),
    ("sample", ["sampler:", "fid:", "data:"], ["schema", "model:", "objective:", "optim:", "callbacks:"]),
    ("figures", ["figure:", "sampler:", "data:"], ["schema", "model:", "fid:"]),
    ("build_refstats", ["data:"], ["schema", "checkpoint", "sampler:"]),
])
def test_help_lists_only_what_the_script_takes(script, groups, absent):
    text = cli.help_text(script, [])
    head = text.split("== Config")[0]
    for g in groups:
        assert f"\n{g}" in head
    for a in absent:
        assert a not in head, a


def test_help_shows_each_settings_comment_from_its_yaml(tmp_path):
    """``--help`` explains the top-level settings with their comments in conf/NAME.yaml, trailing or above."""
    text = cli.help_text("train", [])
    assert "\n# Resume: a checkpoint path, \"last\"" in text
    assert "carries its full resolved config.\nckpt_path: null\n" in text
    sample = cli.help_text("sample", [])
    assert "\nuse_ema: true  # EMA weights (the paper's); false = the raw trained weights\n" in sample
    conf = tmp_path / "x.yaml"
    conf.write_text("# header\ndefaults:\n  - a: b  # not a key\n\n# one\n# two\nk: 1\nj: '#1'  # why\nn: 2\n")
    comments = cli.yaml_comments(conf)
    assert comments == {"k": (["# one", "# two"], ""), "j": ([], "why"), "n": ([], "")}
    assert cli.with_comments("k: 1\nj: '#1'\nn: 2\nm:\n  k: 3\n", comments) == (
        "# one\n# two\nk: 1\nj: '#1'  # why\nn: 2\nm:\n  k: 3\n")


# ------------------------------------------------------------------------------------ real processes
@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """Every bad command of this module as a real process, two at a time; ``{name: CompletedProcess}``."""
    tmp = tmp_path_factory.mktemp("cli")
    ckpt = tiny_checkpoint(tmp_path_factory)
    learned = tiny_checkpoint(tmp_path_factory, extra=("objective=eps_vlb_learned",))
    text = tmp / "notes.txt"
    text.write_text("these are my notes, not a checkpoint\n")
    empty = tmp / "empty.ckpt"
    empty.write_bytes(b"")
    truncated = tmp / "truncated.ckpt"
    truncated.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    blocker = tmp / "a_file"
    blocker.write_text("x")
    train = [str(ROOT / "train.py"), *tiny_overrides(tmp / "unused", steps=1)]
    sample = [str(ROOT / "sample.py"), "trainer.accelerator=cpu", "progress=false"]
    jobs = {
        "lr": [*train, "optim.lr=-1", f"hydra.run.dir={tmp / 'lr'}"],
        "max_steps": [*train, "trainer.max_steps=abc", f"hydra.run.dir={tmp / 'ms'}"],
        "missing_cifar": [*train, "data=cifar10", f"data.root={tmp / 'no_cifar'}", f"paths.output_dir={tmp / 'mc'}",
                          f"hydra.run.dir={tmp / 'mc'}"],
        "unwritable_output": [*train, f"paths.output_dir={blocker / 'run'}", f"hydra.run.dir={tmp / 'uw'}"],
        "train_text_ckpt": [*train, f"ckpt_path={text}", f"paths.output_dir={tmp / 'tc'}",
                            f"hydra.run.dir={tmp / 'tc'}"],
        "narrow_model": [*train, "model.ch=7", "final_samples=0", f"paths.output_dir={tmp / 'nm'}",
                         f"hydra.run.dir={tmp / 'nm'}"],
        "text_ckpt": [*sample, f"ckpt_path={text}", f"out_dir={tmp / 's1'}", f"hydra.run.dir={tmp / 's1'}"],
        "empty_ckpt": [*sample, f"ckpt_path={empty}", f"out_dir={tmp / 's2'}", f"hydra.run.dir={tmp / 's2'}"],
        "truncated_ckpt": [*sample, f"ckpt_path={truncated}", f"out_dir={tmp / 's3'}", f"hydra.run.dir={tmp / 's3'}"],
        "no_inception": [*sample, f"ckpt_path={ckpt}", "compute_fid=true", "num_samples=4",
                         "fid.feature_extractor=inception", f"fid.inception_weights={tmp / 'pt_inception.pth'}",
                         f"out_dir={tmp / 's4'}", f"hydra.run.dir={tmp / 's4'}"],
        "learned_var_on_fixed": [*sample, f"ckpt_path={ckpt}", "num_samples=2", "sampler.var_type=learned",
                                 f"out_dir={tmp / 's5'}", f"hydra.run.dir={tmp / 's5'}"],
        "fixed_var_on_learned": [*sample, f"ckpt_path={learned}", "num_samples=2", "sampler.var_type=fixed_small",
                                 f"out_dir={tmp / 's6'}", f"hydra.run.dir={tmp / 's6'}"],
        "nll_with_data": ["-m", "ddpm.nll", "trainer.accelerator=cpu", "progress=false", f"ckpt_path={ckpt}",
                          "data=digits", "max_images=2", f"out_dir={tmp / 's7'}", f"hydra.run.dir={tmp / 's7'}"],
        "moved_steps": [*sample, f"ckpt_path={ckpt}", "steps=5", f"hydra.run.dir={tmp / 's8'}"],
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {k: pool.submit(run, v, tmp) for k, v in jobs.items()}
        out = {k: f.result() for k, f in futures.items()}
    out["_tmp"], out["_ckpt"] = tmp, ckpt
    return out


def _clean_error(proc, *needles: str) -> None:
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text[-3000:]
    assert "Traceback" not in text and "Error executing job" not in text, text[-3000:]
    assert [ln.startswith("Error: ") for ln in proc.stderr.splitlines()].count(True) == 1, proc.stderr[-3000:]
    for needle in needles:
        assert needle in proc.stderr, proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("case,needles", [
    ("lr", ["optim.lr=-1"]),
    ("max_steps", ["trainer.max_steps='abc'"]),
    ("missing_cifar", ["CIFAR-10 not found", "data.download=true", "data.root="]),
    ("unwritable_output", ["paths.output_dir=", "cannot be created or written"]),
    ("train_text_ckpt", ["is not a checkpoint (a text file)"]),
    ("text_ckpt", ["ckpt_path:", "is not a checkpoint (a text file)"]),
    ("empty_ckpt", ["ckpt_path:", "is empty (0 bytes)"]),
    ("truncated_ckpt", ["ckpt_path:", "is not a checkpoint", "truncated or corrupt"]),
    ("no_inception", ["fid.inception_weights=", "file not found"]),
    ("learned_var_on_fixed", ["sampler.var_type=learned", "fixed variance", "fixed_small"]),
    ("moved_steps", ["steps=...", "sampler.steps"]),
])
def test_a_bad_command_is_one_clean_error(cases, case, needles):
    _clean_error(cases[case], *needles)


@pytest.mark.slow
def test_refused_runs_leave_nothing_that_blocks_the_corrected_command(cases):
    tmp = cases["_tmp"]
    assert not (tmp / "s4" / "shards").exists()  # the missing Inception weights were found before sampling
    assert not (tmp / "s5" / "shards").exists()
    fixed = run([str(ROOT / "sample.py"), f"ckpt_path={cases['_ckpt']}", "num_samples=2", "trainer.accelerator=cpu",
                 "progress=false", f"out_dir={tmp / 's5'}", f"hydra.run.dir={tmp / 's5'}"], tmp)
    assert fixed.returncode == 0, fixed.stderr[-3000:]


@pytest.mark.slow
def test_explicit_fixed_variance_samples_a_learned_variance_model(cases):
    """A learned-variance model sampled with sampler.var_type=fixed_small: asked for explicitly, it runs
    (the network's mean channels with the fixed variance)."""
    proc = cases["fixed_var_on_learned"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((cases["_tmp"] / "s6" / "metrics.json").read_text())
    assert m["sampler"]["var_type"] == "fixed_small" and m["num_samples"] == 2


@pytest.mark.slow
def test_narrow_model_trains_with_a_loud_warning(cases):
    proc = cases["narrow_model"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[WARNING] model.ch=7" in proc.stdout + proc.stderr and "multiple of 32" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_the_nll_takes_data_name(cases):
    proc = cases["nll_with_data"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "bits/dim" in proc.stdout and json.loads((cases["_tmp"] / "s7" / "nll.json").read_text())["num_images"] == 2


@pytest.mark.slow
def test_default_recipe_console_has_no_warning_and_no_line_twice(tmp_path):
    """`python train.py` (the quickstart recipe, fewer steps than its logging interval): nothing that looks
    broken on the console, and the CSV log is written all the same."""
    out = tmp_path / "run"
    proc = run([str(ROOT / "train.py"), "trainer.max_steps=20", "final_samples=16", f"hydra.run.dir={out}"],
               tmp_path, fresh=True, OMP_NUM_THREADS="2")  # a new interpreter: import-time warnings count too
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    lowered = text.lower()
    for bad in ("warn", "deprecat", "traceback", "error", "/-2", "tip:", "weights_only", "total flops: 0"):
        assert bad not in lowered, (bad, text)
    lines = [ln for ln in text.splitlines() if ln.strip() and not set(ln.strip()) <= set("━─│┃┏┓┗┛┡┩└┘╇╈┳┻ ")]
    assert len(lines) == len(set(lines)), text
    assert "training: 20/20 step" in text and "final samples" in text
    assert (out / "samples.png").is_file() and (out / "csv" / "metrics.csv").is_file()


@pytest.mark.parametrize("module", ["ddpm.convert", "ddpm.export"])
def test_the_commands_that_take_only_paths_say_so_and_fail_in_one_line(module, capsys):
    """argparse, kept for the commands without settings: --help says why; a mistyped option is one Error: line
    naming the valid ones, exit status 1 (argparse's own: a usage block and status 2)."""
    import importlib

    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0 and "takes only paths" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["a", "b", "--overwrit"])
    err = capsys.readouterr().err
    assert info.value.code == 1 and err.startswith(f"Error: python -m {module}: unrecognized arguments: --overwrit")
    assert "Valid: " in err and "--help" in err and err.count("\n") == 1
