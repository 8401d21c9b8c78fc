"""Every command the same way in (issue 27): a console script for each command (pyproject.toml's table, its
targets run with ``--help`` in-process: the shared install must not be repointed by ``pip install -e``), and
every Hydra command refuses a bad value and an unknown key with one clean ``Error:`` line naming the key, before
Hydra starts the job; the commands that take only paths end their errors without Hydra's hint."""

from __future__ import annotations

import importlib
import sys
import tomllib

import pytest
from conftest import ROOT

from ddpm.core import cli
from ddpm.core.checks import CHECKS
from ddpm.core.config import CONF_DIR, SCHEMAS

SCRIPTS: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
HYDRA_COMMANDS = sorted(SCHEMAS.values())  # every conf/<name>.yaml with a command's schema
PATHS_COMMANDS = ("export", "convert")  # argparse: they take only paths


def target(name: str):
    module, _, attr = SCRIPTS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def test_every_command_has_a_console_script():
    assert sorted(SCRIPTS) == sorted(cli.console_script(c) for c in (*HYDRA_COMMANDS, *PATHS_COMMANDS))
    assert {p.stem for p in CONF_DIR.glob("*.yaml")} == set(HYDRA_COMMANDS)  # no command without its schema
    assert set(CHECKS) == set(HYDRA_COMMANDS)  # ... nor without its value checks


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_each_console_script_target_answers_help(name, monkeypatch, capsys):
    """What ``ddpm-X --help`` runs: the entry point's function with sys.argv as the console script sets it."""
    monkeypatch.setattr(sys, "argv", [name, "--help"])
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # parse_paths installs its own for a real command line
    with pytest.raises(SystemExit) as info:
        target(name)()
    out = capsys.readouterr().out
    assert info.value.code == 0
    script = name.removeprefix("ddpm-").replace("-", "_")
    if script in HYDRA_COMMANDS:  # the shared Hydra shell: this command's own config and groups
        assert f"or: {name} [KEY=VALUE ...]" in out and f"\ntask_name: {script}\n" in out, out[:500]
        for group in cli.SCRIPT_GROUPS[script]:
            assert f"\n{group}: " in out
    else:
        assert out.startswith(f"usage: python -m ddpm.{script}") and "takes only paths" in out


# one bad value per Hydra command (a key that only the value checks of ddpm.core.checks refuse, typed correctly)
BAD_VALUES = {
    "train": ("optim.ema_decay=1.5", "optim.ema_decay=1.5 is not valid"),
    "sample": ("shard_size=0", "shard_size=0 is not valid"),
    "nll": ("split=validation", "split='validation' is not valid: expected train | val | test"),
    "figures": ("figure.num_images=0", "figure.num_images=0 is not valid"),
    "frontier": ("samplers=[ddim,ddpm]", "samplers=['ddim', 'ddpm'] is not valid"),
    "report": ("sample_args=[trainer.devices]", "sample_args=['trainer.devices'] is not valid"),
    "build_refstats": ("device=gpu", "device='gpu' is not valid: expected auto (cuda if available), cpu"),
}


def _one_clean_line(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("Error: ")]
    assert len(errors) == 1 and err.startswith("Error: ") and "Traceback" not in err, err
    assert all(n in errors[0] for n in needles), err
    return err


def test_every_hydra_command_has_a_bad_value_case():
    assert sorted(BAD_VALUES) == HYDRA_COMMANDS


@pytest.mark.parametrize("script", HYDRA_COMMANDS)
@pytest.mark.slow  # over 2 s on 2 cores: the fast tier stays under 3 minutes
def test_each_hydra_command_refuses_a_bad_value_and_an_unknown_key(script, capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.delenv("DDPM_DEBUG", raising=False)
    override, message = BAD_VALUES[script]
    with pytest.raises(SystemExit) as info:
        cli.preflight(script, [override])
    assert info.value.code == 1
    err = _one_clean_line(capsys, message)
    assert err.count("\n") == 2 and err.endswith(f"{cli.HYDRA_HINT}\n")  # Hydra composed it: its hint applies
    with pytest.raises(SystemExit) as info:
        cli.preflight(script, ["colour=blue"])
    assert info.value.code == 1
    err = _one_clean_line(capsys, "colour: no such option of ", "Valid keys at the top level: ", " task_name,")
    assert err.count("\n") == 1
    with pytest.raises(SystemExit) as info:  # a key below a group, mistyped
        cli.preflight(script, ["paths.output_dri=x"])
    _one_clean_line(capsys, "paths.output_dri: no such option", "Did you mean 'paths.output_dir'")


@pytest.mark.slow  # over 2 s on 2 cores: the fast tier stays under 3 minutes
def test_the_value_checks_pass_every_default_and_name_the_first_bad_key():
    """Each command's defaults pass; a bad value is refused at composition, naming its key."""
    from ddpm.core.config import compose

    for script in HYDRA_COMMANDS:
        compose(script, [])
    with pytest.raises(ValueError, match=r"^max_images=0 is not valid: expected null or an integer >= 1"):
        compose("nll", ["max_images=0", "t_batch=0"])
    with pytest.raises(ValueError, match=r"^t_batch=0 is not valid"):
        compose("nll", ["t_batch=0"])
    with pytest.raises(ValueError, match=r"^trainer.devices=0 is not valid"):
        compose("sample", ["trainer.devices=0"])
    compose("sample", ["trainer.devices=[0,1]"])
    compose("nll", ["trainer.devices=auto"])
    with pytest.raises(ValueError, match=r"^compute_fid=true needs at least min_fid_samples=2 samples"):
        compose("sample", ["compute_fid=true", "num_samples=1"])


def test_a_paths_command_ends_a_user_error_without_hydras_hint(tmp_path, monkeypatch, capsys):
    """``ddpm-export`` calls ``ddpm.commands.export:main`` without the ``__main__`` block: a user error still ends the
    command as one ``Error:`` line (through the hook the real command line installs), with the hint that works
    where Hydra never ran."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.delenv("DDPM_DEBUG", raising=False)
    monkeypatch.setattr(sys, "argv", ["ddpm-export", str(tmp_path / "no_run"), str(tmp_path / "out")])
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
    with pytest.raises((FileNotFoundError, ValueError)) as info:
        target("ddpm-export")()
    assert sys.excepthook is not sys.__excepthook__
    sys.excepthook(info.type, info.value, info.tb)  # what Python calls before it exits with status 1
    err = _one_clean_line(capsys, "no_run")
    assert err.endswith(f"\n{cli.DEBUG_HINT}\n") and "HYDRA" not in err and err.count("\n") == 2
    monkeypatch.setenv("DDPM_DEBUG", "1")  # the traceback, as promised
    sys.excepthook(info.type, info.value, info.tb)
    assert "Traceback" in capsys.readouterr().err
