"""Every shell command in README.md's fenced ``bash``/``sh``/``shell``/``console`` blocks is checked against the
project, without running it (issue 30): a Hydra command (``python train.py``, ``python sample.py``,
``python -m ddpm.<tool>`` with a ``conf/<tool>.yaml``, or its ``ddpm-<tool>`` console script) is composed with
its overrides through Hydra's compose API and the project's checks (:func:`ddpm.core.config.compose`), so every key
it names must exist in the config it composes and every value must pass the checks a run makes first; a
multirun is composed once per swept value. Every ``python -m`` module must import; a ``python some/file.py``
must exist; every ``pip install '.[extra]'`` extra must be in pyproject.toml. Placeholders (``RUN``, ``OUT``,
``<timestamp>``, ``...``) are only strings to the composition; commands that need GPUs, data or a checkpoint
are composed, never run.
"""

from __future__ import annotations

import importlib
import re
import shlex
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CONF = ROOT / "conf"
SHELL_BLOCKS = ("bash", "sh", "shell", "console")
HYDRA_FLAGS = {"-m", "--multirun"}
HYDRA_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--info", "-i", "--config-name", "-cn", "--config-dir", "-cd",
                     "--config-path", "-cp", "--experimental-rerun"}
PLACEHOLDER = re.compile(r"^\.\.\.$|^<[^>]*>$")


def fenced_commands(text: str) -> list[str]:
    """The commands of the shell blocks: comments dropped, ``\\`` continuations joined, ``a && b`` / ``a; b``
    split, a trailing ``&`` dropped; a one-line ``for V in A B; do ...; done`` gives its body once per value."""
    out: list[str] = []
    for lang, body in re.findall(r"^```(\w*)[^\n]*\n(.*?)^```", text, re.S | re.M):
        if lang not in SHELL_BLOCKS:
            continue
        joined = re.sub(r"\\\n\s*", " ", body)
        for line in joined.splitlines():
            line = line.strip()
            if line.startswith("$ "):
                line = line[2:]
            code = _strip_comment(line)
            if m := re.fullmatch(r"for (\w+) in ([^;]*); do (.*?);? done", code):  # one command per value
                var, values, body = m.groups()
                code = "; ".join(re.sub(rf"\$\{{?{var}\}}?", v, body) for v in values.split())
            for part in re.split(r"\s*(?:&&|;|\|\|)\s*", code):
                part = part.strip().removesuffix("&").strip()
                part = " ".join(re.sub(r"^(?:do|then|else)\s+", "", part).split())
                if part and not re.match(r"^(for|done|fi|if)\b", part):
                    out.append(part)
    return out


def _strip_comment(line: str) -> str:
    """``line`` without its ``# comment`` (a ``#`` inside quotes is kept)."""
    quote = None
    for i, ch in enumerate(line):
        if ch in "'\"" and quote in (None, ch):
            quote = None if quote else ch
        elif ch == "#" and quote is None and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line


def console_scripts() -> dict[str, str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("scripts", {})


def extras() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("optional-dependencies", {}))


def check(command: str) -> list[str]:
    """The problems of one README command (empty: it is right)."""
    try:
        argv = shlex.split(command)
    except ValueError as e:
        return [f"cannot be parsed as a shell command: {e}"]
    while argv and re.match(r"^[A-Z_][A-Z0-9_]*=", argv[0]):  # VAR=value python ...
        argv = argv[1:]
    if not argv:
        return []
    if argv[0] == "pip" and "install" in argv:
        problems = []
        for arg in argv:
            if m := re.fullmatch(r"(?:-e\s*)?\.\[([\w,\-]+)\]", arg):
                valid = ", ".join(sorted(extras()))
                problems += [f"pip extra [{x}] is not in pyproject.toml's optional-dependencies ({valid})"
                             for x in m.group(1).split(",") if x not in extras()]
        return problems
    scripts = console_scripts()
    if argv[0] in scripts:
        module = scripts[argv[0]].split(":")[0]
        problems = _imports(module)
        name = argv[0].removeprefix("ddpm-").replace("-", "_")
        return problems + (_composes(name, argv[1:]) if (CONF / f"{name}.yaml").is_file() else [])
    if not re.fullmatch(r"python3?", argv[0]) or len(argv) < 2:
        return []  # another program (pytest, hf, wandb, ...): not ours to check
    if argv[1] == "-m":
        module = argv[2]
        problems = _imports(module)
        name = module.removeprefix("ddpm.").rpartition(".")[2]
        if module.startswith("ddpm.") and (CONF / f"{name}.yaml").is_file():
            problems += _composes(name, argv[3:])
        return problems
    script = ROOT / argv[1]
    if not script.is_file():
        return [f"{argv[1]}: no such file in the repository"]
    if script.parent == ROOT and (CONF / f"{script.stem}.yaml").is_file():  # train.py, sample.py
        return _composes(script.stem, argv[2:])
    return []


def _imports(module: str) -> list[str]:
    try:
        importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - reported as the problem
        return [f"python -m {module}: does not import ({type(e).__name__}: {e})"]
    return []


def _composes(config: str, args: list[str]) -> list[str]:
    """Compose ``conf/<config>.yaml`` with the command's overrides (each swept value once for ``-m``)."""
    from hydra.errors import HydraException

    from ddpm.core.cli import _composition_message, sweep_variants
    from ddpm.core.config import compose

    kept, skip = [], False
    for a in args:  # Hydra's own flags (--cfg job, --help, ...) are not overrides
        if skip or (a.startswith("-") and a not in HYDRA_FLAGS):
            skip = not skip and a in HYDRA_VALUE_FLAGS
            continue
        kept.append(re.sub(r"<[^>]*>", "PLACEHOLDER", a))  # dir/<timestamp>: what the user fills in
    args = kept
    overrides = [a for a in args if "=" in a and not PLACEHOLDER.match(a)]
    others = [a for a in args if "=" not in a and a not in HYDRA_FLAGS and not PLACEHOLDER.match(a)]
    problems = [f"{a!r} is not KEY=VALUE" for a in others]
    jobs = sweep_variants(overrides) if any(a in HYDRA_FLAGS for a in args) else [overrides]
    for job in jobs:
        try:
            compose(config, ["paths.output_dir=/unused", *job] if config == "train" else job)
        except HydraException as e:
            problems.append(_composition_message(config, e, job))
        except (ValueError, TypeError, KeyError) as e:
            problems.append(f"{type(e).__name__}: {e}")
    return problems


COMMANDS = fenced_commands(README.read_text()) if README.is_file() else []


def test_the_readme_has_commands_to_check():
    assert any(c.startswith("python train.py") for c in COMMANDS), COMMANDS[:5]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[:80])
@pytest.mark.slow  # over 2 s on 2 cores: the fast tier stays under 3 minutes
def test_readme_command_matches_the_configs(command):
    assert check(command) == []


# ---------------------------------------------------------------- the checker itself, on made-up READMEs
def test_extraction_joins_continuations_splits_chains_and_drops_comments():
    text = ("intro\n```bash\n# a comment\npip install -e . && python train.py   # trains\npython train.py \\\n"
            "  optim.lr=1e-3 &\nfor o in a b; do python train.py objective=$o; done\n```\n"
            "```python\nimport ddpm\n```\n")
    assert fenced_commands(text) == ["pip install -e .", "python train.py", "python train.py optim.lr=1e-3",
                                     "python train.py objective=a", "python train.py objective=b"]


@pytest.mark.parametrize("command,needle", [
    ("python train.py optim.lrr=1", "optim.lrr: no such option"),
    ("python train.py -m sweep=table2_digits objective=simple,simpel", "objective=simpel: no such option"),
    ("python sample.py ckpt_path=RUN sampler=ddm", "sampler=ddm: no such option"),
    ("python -m ddpm.build_refstats data=cifar10 fid.inception_weights=PATH", "fid.inception_weights"),
    ("python -m ddpm.no_such_tool x", "does not import"),
    ("python bench/no_such_bench.py", "no such file"),
    ("pip install -e '.[nosuchextra]'", "pip extra [nosuchextra]"),
    ("python train.py optim.lr=-1", "optim.lr=-1"),
])
def test_a_wrong_command_is_reported(command, needle):
    problems = check(command)
    assert problems and needle in " ".join(problems), problems


@pytest.mark.parametrize("command", [
    "python train.py data=cifar10 trainer=ddp trainer.devices=8",
    "python train.py -m sweep=table2 data=cifar10 hydra/launcher=submitit_slurm hydra.launcher.gpus_per_node=8",
    "python -m ddpm.report multirun_dir=multirun/table2/cifar10 evaluate=true devices=8",
    "OMP_NUM_THREADS=1 python sample.py ckpt_path=RUN sampler=ddim sampler.steps=50 --cfg job",
    "python -m ddpm.build_refstats data=cifar10 split=train inception_weights=PATH",
])
def test_a_right_command_passes(command):
    assert check(command) == []


def test_the_documented_row_sequence_is_checked_row_by_row():
    """The Table 2 rows with DDP on one machine (conf/sweep/table2.yaml): one single run per row."""
    text = ("```bash\nfor o in simple simpel; do python train.py sweep=table2 hydra.mode=RUN objective=$o "
            "data=cifar10 trainer=ddp trainer.devices=8; done\n```\n")
    commands = fenced_commands(text)
    assert [c.split("objective=")[1].split()[0] for c in commands] == ["simple", "simpel"]
    assert check(commands[0]) == [] and "objective=simpel: no such option" in " ".join(check(commands[1]))


def test_the_readme_is_under_15_kb_with_the_quick_start_first_and_its_grid():
    """Issue 30: a newcomer's page, short; the quick start is the first task, with its sample grid; every image and
    file it links exists."""
    text = README.read_text()
    assert len(text.encode()) < 15_000, len(text.encode())
    tasks = re.findall(r"^## (.+)$", text, re.M)
    assert tasks[:2] == ["Install", "Quick start"], tasks
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "python train.py\n" in quick and "![quickstart samples](docs/quickstart_samples.png)" in quick
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    missing = [link for link in links if "://" not in link and not (ROOT / link).exists()]
    assert links and not missing, missing
