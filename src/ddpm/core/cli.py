"""What every command (``train.py``, ``sample.py``, ``python -m ddpm.<tool>``) does the same way towards the
user: one clean block for a user error, a console without duplicated or misleading lines, and ``--help``
that lists only what the script takes.

* **User errors** (a bad value, a missing file or dataset, a checkpoint that is not one, a run that diverged, a
  full disk or quota wherever a file is written, a dead process of a DDP run) are printed as
  ``Error: <message>`` on stderr, exit status 1, no traceback. ``HYDRA_FULL_ERROR=1`` (or ``DDPM_DEBUG=1``)
  shows the full traceback instead. Anything else is a bug and keeps its traceback.
* **Console**: Lightning's own console handler is removed (its lines went out twice: once plain, once through
  Hydra's handler), library notices that the project's defaults would trigger are filtered, and Hydra's
  console lines are short (``[INFO] message``); the run directory's log file keeps the full format.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from ddpm.core.io import DiskFullError, DownloadError, MissingDependencyError, RankFailedError, disk_full

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, PermissionError, FloatingPointError,
                                                NotADirectoryError, IsADirectoryError, DownloadError,
                                                MissingDependencyError, DiskFullError, RankFailedError)

# Library messages that the project's own defaults trigger and that say nothing to the user.
# Lightning notices that the project's own defaults cause (tip, its save path, the recipe's limit_val_batches)
_QUIET_LOG = ("💡 Tip:", "`weights_only` was not set", "was configured so 1 batch will be used")
_QUIET_WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",  # lightning's _pytree on torch >= 2.10
    r".*is smaller than the logging interval.*",  # steps are counted across epochs: nothing is lost
    r".*module\(s\) in eval mode at the start of training.*",  # the EMA copy, on purpose
    r".*The '(train|val|test)_dataloader' does not have many workers.*",  # in-memory data: workers cost more
    r".*Checkpoint directory .* exists and is not empty.*",  # a resume writes into its own run directory
    r".*Experiment logs directory .* exists and is not empty.*",  # likewise (the CSV log is continued)
)


def debug() -> bool:
    return "1" in (os.environ.get("HYDRA_FULL_ERROR"), os.environ.get("DDPM_DEBUG"))


def user_message(e: BaseException) -> str | None:
    """The message to show for a user error (unwrapping Hydra's instantiation wrapper), ``None`` for a bug."""
    from hydra.errors import InstantiationException

    if isinstance(e, InstantiationException) and isinstance(e.__cause__, USER_ERRORS):
        e = e.__cause__
    if not isinstance(e, USER_ERRORS) and (full := disk_full(e)) is not None:  # a write outside ddpm.core.io's writer
        e = full
    if isinstance(e, USER_ERRORS) or type(e).__name__ in ("ImageDecodeError", "DatasetNotFoundError"):
        text = str(e.args[0]) if len(e.args) == 1 else str(e)
        if "Original Traceback" in text:  # raised in a DataLoader worker: its last line is the message
            last = [ln for ln in text.splitlines() if ln.strip()][-1]
            text = last.split(": ", 1)[1] if last.startswith(type(e).__name__) else last
        if isinstance(e, FileNotFoundError | PermissionError) and e.filename and text == e.strerror:
            text = f"{e.strerror}: {e.filename}"
        return text
    return None


HYDRA_HINT = "(set HYDRA_FULL_ERROR=1 for the full traceback)"  # where Hydra ran (it honours the variable too)
DEBUG_HINT = "(set DDPM_DEBUG=1 for the full traceback)"  # the commands that take only paths (no Hydra)


@contextmanager
def user_errors(hint: str = DEBUG_HINT) -> Iterator[None]:
    """Turn a user error raised inside into ``Error: ...`` on stderr and exit status 1 (no traceback), with
    ``hint``: how to see the traceback (the Hydra apps pass :data:`HYDRA_HINT`)."""
    try:
        yield
    except BaseException as e:  # noqa: BLE001 - classified below; everything else is re-raised
        message = None if debug() or isinstance(e, SystemExit | KeyboardInterrupt) else user_message(e)
        if message is None:
            raise
        sys.stderr.write(f"Error: {message}\n{hint}\n")
        sys.stderr.flush()
        raise SystemExit(1) from None


class _QuietFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(q in record.getMessage() for q in _QUIET_LOG)


def setup_console() -> None:
    """Each line once, no notices caused by the project's defaults (call it inside the Hydra task)."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            lg.removeHandler(h)
        lg.propagate = True
    quiet = _QuietFilter()
    for h in logging.getLogger().handlers:
        h.addFilter(quiet)
    for pattern in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


def run(task: Callable[[], Any]) -> Any:
    """Run an application inside a Hydra task: the console set up, user errors as one clean block."""
    setup_console()
    with user_errors(HYDRA_HINT):
        return task()


# ------------------------------------------------------------------------------------------------ --help
# Every command that takes settings: its conf/<script>.yaml, the groups it takes, how it is run.
SCRIPT_GROUPS = {
    "train": ("data", "model", "objective", "diffusion", "optim", "trainer", "sampler", "callbacks", "logger",
              "sweep"),
    "sample": ("sampler", "fid", "data"),
    "frontier": ("fid", "data"),
    "figures": ("figure", "sampler", "data"),
    "nll": ("data",),
    "build_refstats": ("data",),
    "report": ("sampler",),
}
HIDDEN_OPTIONS = {"train": {"data": {"checkpoint"}}, "build_refstats": {"data": {"checkpoint"}}}
COMMANDS = {"train": "python train.py", "sample": "python sample.py"}


def command(script: str) -> str:
    """How ``script`` is run: ``python train.py``, ``python -m ddpm.figures``, ..."""
    return COMMANDS.get(script, f"python -m ddpm.{script}")


def console_script(script: str) -> str:
    """The console script of ``script`` (pyproject.toml's ``[project.scripts]``): ``ddpm-build-refstats``."""
    return f"ddpm-{script.replace('_', '-')}"


def hydra_app(script: str, task: Callable[[Any], Any]) -> None:
    """Run ``task(cfg)`` as the Hydra app of ``conf/<script>.yaml``: ``--help`` and the command line checked
    first (:func:`preflight`), then Hydra (overrides, ``--cfg job``, ``-m``), user errors as one ``Error:`` line."""
    import hydra

    from ddpm.core.config import CONF_DIR, validate_config

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=script)
    def _main(cfg: Any) -> Any:  # validated again in the job: each job of a multirun (-m) is checked only here
        return run(lambda: (validate_config(cfg), task(cfg))[1])

    preflight(script)
    _guard_hydra_writes()
    _main()


def _guard_hydra_writes() -> None:
    """Hydra writes ``.hydra/*.yaml`` before the job starts, outside :func:`run` and with no hook before: its
    writer is wrapped, so that a full disk there is one ``Error:`` line too (ddpm.core.io's DiskFullError), no traceback."""
    import hydra.core.utils as hydra_utils

    if not getattr(save := hydra_utils._save_config, "ddpm_guarded", False):
        def guarded(*args: Any) -> None:
            with user_errors(HYDRA_HINT):
                save(*args)

        guarded.ddpm_guarded = True  # type: ignore[attr-defined]
        hydra_utils._save_config = guarded


def group_options(conf_dir: Path, group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))


def help_text(script: str, overrides: list[str]) -> str:
    """``--help`` of ``train.py`` / ``sample.py``: the groups the script takes with their options, then the
    composed configuration (with ``overrides`` applied), as Hydra's help but without what the script cannot
    take (other scripts' groups, the schemas)."""
    from omegaconf import OmegaConf

    from ddpm.core.config import CONF_DIR, compose, setting_files

    lines = [f"{command(script)} [KEY=VALUE ...]   (Hydra; -m for a multirun; --hydra-help for Hydra's options)",
             f"  or: {console_script(script)} [KEY=VALUE ...]   (the same, as an installed console script)",
             "", "== Groups (group=option) =="]
    for g in SCRIPT_GROUPS[script]:
        opts = [o for o in group_options(CONF_DIR, g) if o not in HIDDEN_OPTIONS.get(script, {}).get(g, set())]
        lines.append(f"{g}: {', '.join(opts)}")
    cfg = compose(script, overrides)
    cfg = OmegaConf.to_container(cfg, resolve=False)
    cfg.pop("hydra", None)
    lines += ["", "== Config (override any key: key.sub=value) ==",
              with_comments(OmegaConf.to_yaml(cfg), {k: v for f in setting_files(script) for k, v in
                                                     yaml_comments(f).items()})]
    return "\n".join(lines)


_TOP_KEY = re.compile(r"([A-Za-z_]\w*):(.*)")


def yaml_comments(path: Path) -> dict[str, tuple[list[str], str]]:
    """``{key: (comment lines above it, trailing comment)}`` for the top-level keys of a config file, written
    ``key: value  # comment`` or under a block of ``# ...`` lines: the one place a setting is explained, shown
    by ``--help``."""
    if not path.is_file():
        return {}
    out: dict[str, tuple[list[str], str]] = {}
    above: list[str] = []
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            above += [] if line.startswith("# @package") else [line]
            continue
        m = _TOP_KEY.fullmatch(line.rstrip())
        if m and m.group(1) != "defaults":
            _, hash_, comment = m.group(2).partition(" #")
            out[m.group(1)] = (above, comment.strip() if hash_ else "")
        above = []
    return out


def with_comments(text: str, comments: dict[str, tuple[list[str], str]]) -> str:
    """``text`` (a config as YAML) with each top-level key's comments from :func:`yaml_comments`."""
    out = []
    for line in text.splitlines():
        m = _TOP_KEY.fullmatch(line)
        above, trailing = comments.get(m.group(1), ([], "")) if m else ([], "")
        out += [*above, f"{line}  # {trailing}" if trailing else line]
    return "\n".join(out) + "\n"


def maybe_print_help(script: str, argv: list[str] | None = None) -> None:
    """Print :func:`help_text` and exit when ``--help``/``-h`` is on the command line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--help" not in argv and "-h" not in argv:
        return
    overrides = [a for a in argv if not a.startswith("-")]
    with user_errors(HYDRA_HINT):
        text = help_text(script, overrides)
    try:
        print(text, flush=True)
    except BrokenPipeError:  # `--help | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    raise SystemExit(0)


class PathsArgumentParser(argparse.ArgumentParser):
    """The parser of a command that takes only paths (and switches), which is why it is not a Hydra app: its
    ``--help`` says so, and a mistyped option is one ``Error:`` line naming the valid ones, exit status 1."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("epilog", "This command takes only paths, so it parses them with argparse; the commands "
                                    "that take settings are Hydra apps (KEY=VALUE overrides, --help, --cfg job).")
        kwargs.setdefault("allow_abbrev", False)  # --overwrit is a typo, not --overwrite
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        valid = sorted(o for a in self._actions for o in a.option_strings) + [
            a.dest for a in self._actions if not a.option_strings]
        sys.stderr.write(f"Error: {self.prog}: {message}. Valid: {', '.join(valid)} (--help describes them).\n")
        raise SystemExit(1)


def _paths_excepthook(kind: type[BaseException], e: BaseException, tb: Any) -> None:
    """A user error that ends a command taking only paths: one ``Error:`` line, as :func:`user_errors` writes it
    (Python exits with status 1 after the hook); anything else, or ``DDPM_DEBUG=1``: the traceback."""
    message = None if debug() else user_message(e)
    if message is None:
        sys.__excepthook__(kind, e, tb)
    else:
        sys.stderr.write(f"Error: {message}\n{DEBUG_HINT}\n")


def parse_paths(prog: str, description: str, paths: dict[str, str], switches: dict[str, str],
                argv: list[str] | None = None) -> argparse.Namespace:
    """The command line of a command that takes only ``paths`` (positional, ``{name: help}``) and boolean
    ``switches`` (``{"--name": help}``), through :class:`PathsArgumentParser`."""
    if argv is None:  # the real command line: also the console script (ddpm-export), which calls main() directly
        sys.excepthook = _paths_excepthook
    parser = PathsArgumentParser(prog=prog, description=description)
    for name, text in paths.items():
        parser.add_argument(name, help=text)
    for name, text in switches.items():
        parser.add_argument(name, action="store_true", help=text)
    return parser.parse_args(argv)


# Options that moved when a sampler became one config group and the FID settings another.
MOVED = {
    "steps": "sampler.steps", "eta": "sampler.eta", "clip_denoised": "sampler.clip_denoised",
    "var_type": "sampler.var_type", "final_sampler": "sampler=NAME", "final_sampler.name": "sampler=NAME",
    "final_sampler.steps": "sampler.steps", "feature_extractor": "fid.feature_extractor",
    "inception_weights": "fid.inception_weights", "ref_split": "fid.ref_split", "ref_stats": "fid.ref_stats",
    "is_splits": "fid.is_splits", "data_overrides": "data=NAME data.root=PATH",
    # the NLL bound became its own command (conf/nll.yaml)
    "nll": "python -m ddpm.nll ckpt_path=RUN (the NLL bound is its own command; conf/nll.yaml, ddpm-nll)",
    **{f"nll_{k}": f"python -m ddpm.nll {k}=... (the NLL bound is its own command; conf/nll.yaml)"
       for k in ("split", "max_images", "batch_size", "t_batch", "seed")},
}


def _flat_keys(node: Any, prefix: str = "") -> list[str]:
    from omegaconf import DictConfig, OmegaConf

    out = []
    for k in node.keys() if isinstance(node, DictConfig) else []:
        key = f"{prefix}{k}"
        out.append(key)
        child = OmegaConf.select(node, str(k), throw_on_missing=False, throw_on_resolution_failure=False)
        if isinstance(child, DictConfig):
            out += _flat_keys(child, key + ".")
    return out


def preflight(script: str, argv: list[str] | None = None) -> None:
    """Before Hydra starts the job: ``--help``, and the command line composed once, so that a misspelt or
    moved option, a value of the wrong type or an invalid combination is one ``Error:`` block naming the key,
    with a suggestion, and exit status 1 (Hydra's own messages say ``+key=value`` for a typo)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    maybe_print_help(script, argv)
    multirun = any(a in ("-m", "--multirun") for a in argv)
    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in argv):
        return  # other Hydra flags (--cfg, --info, ...): Hydra handles them itself
    from hydra.errors import HydraException

    from ddpm.core.config import compose

    overrides = [a for a in argv if not a.startswith("-")]
    try:
        with user_errors(HYDRA_HINT):
            check_override_syntax(overrides)
            for job in sweep_variants(overrides) if multirun else [overrides]:
                overrides = job  # the job a message is about
                cfg = compose(script, job)
                check_switches(script, job, cfg)
                if not multirun:  # a multirun writes into hydra.sweep.dir
                    _check_run_dir(cfg)
    except HydraException as e:
        if debug():
            raise
        sys.stderr.write(f"Error: {_composition_message(script, e, overrides)}\n")
        raise SystemExit(1) from None


# true/false settings that Lightning also takes a word for: Trainer(deterministic="warn"),
# ModelCheckpoint(save_last="link"), WandbLogger(log_model="all")
SWITCH_WORDS = {"trainer.deterministic": ("warn",), "callbacks.model_checkpoint.save_last": ("link",),
                "logger.wandb.log_model": ("all",)}


def check_switches(script: str, overrides: list[str], cfg: Any) -> None:
    """A ``ValueError`` for a true/false setting given a word that is neither: ``data.random_flip=flase`` composes
    as the string ``'flase'``, which Python reads as true. The settings given a string are looked up in the config
    composed without them (the defaults), once, only when there are such settings."""
    from omegaconf import OmegaConf

    from ddpm.core.config import compose

    given = {}
    for o in overrides:
        key, eq, value = o.partition("=")
        if eq and "." in key and not key.startswith(("+", "~", "hydra.")) and isinstance(
                OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False), str):
            given[o] = (key, value)
    if not given:
        return
    base = compose(script, [o for o in overrides if o not in given], validate=False)
    for key, value in given.values():
        words = SWITCH_WORDS.get(key, ())
        default = OmegaConf.select(base, key, default=None, throw_on_resolution_failure=False)
        if value not in words and isinstance(default, bool):
            also = "".join(f" or {w}" for w in words)
            raise ValueError(f"{key}={value!r} is not valid: expected true or false{also}.")


def check_override_syntax(overrides: list[str]) -> None:
    """A one-line ``ValueError`` for the first override Hydra's grammar cannot read (``foo``, ``key=[1,``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_override(override)
        except HydraException as e:
            why = " ".join(str(e).split("\n")[0].split())
            raise ValueError(f"cannot read the override {override!r} ({why}): write KEY=VALUE, quoted for the shell "
                             "where the value has brackets, commas or spaces (\"key=[1,2]\", \"key='a b'\"); Hydra's "
                             "grammar: https://hydra.cc/docs/advanced/override_grammar/basic/") from None


def sweep_variants(overrides: list[str], max_values: int = 16) -> list[list[str]]:
    """The command line of a multirun (``-m``) as the single jobs that :func:`preflight` composes before Hydra
    starts any: every swept value once (``objective=simple,mu_mse`` gives a job with each), the other sweeps at
    their first value (at most ``max_values`` values of one sweep), so that a mistyped key or option is caught
    before the first job runs, not after it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import Transformer

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        values = [[o.input_line] if not o.is_sweep_override() else  # each value as an override again (quoted)
                  [f"{o.get_key_element()}={v}" for v in o.sweep_iterator(transformer=Transformer.encode)][:max_values]
                  for o in parsed]
    except Exception:  # noqa: BLE001 - a sweep only Hydra can expand (glob over a group): Hydra checks its jobs
        values = [[o] for o in overrides if "," not in o and "(" not in o]
    first = [v[0] for v in values]
    jobs = [first]
    for i, choices in enumerate(values):
        jobs += [[*first[:i], c, *first[i + 1:]] for c in choices[1:]]
    return jobs


def _check_run_dir(cfg: Any) -> None:
    """Hydra creates ``hydra.run.dir`` before the job starts (a traceback when it cannot): check it first."""
    from omegaconf import OmegaConf

    try:
        run_dir = Path(str(OmegaConf.select(cfg, "hydra.run.dir")))
    except Exception:  # noqa: BLE001 - an interpolation only Hydra's job can resolve: leave it to Hydra
        return
    parent = run_dir
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise PermissionError(f"hydra.run.dir={str(run_dir)!r} cannot be created: {parent} is "
                              f"{'not a folder' if not parent.is_dir() else 'not writable'}. Choose a writable "
                              "place: hydra.run.dir=PATH.")


# The groups a checkpoint brings with it: commands that read one (sample.py, the NLL, the frontier, the figures)
# have no such settings of their own.
FROM_RUN = ("model", "diffusion", "objective", "optim")


def _composition_message(script: str, e: BaseException, overrides: list[str]) -> str:
    """Hydra's composition error as one block: the key and value, what is valid, the fix."""
    from omegaconf import OmegaConf

    from ddpm.core.checks import suggest
    from ddpm.core.config import CONF_DIR, SamplerConfig, compose

    text = f"{e}\n{e.__cause__ or ''}".strip()
    if m := re.search(r"Could not override '([^']+)'", text):
        key = m.group(1)
        if key in MOVED:
            return f"{key}=... is not an option of {command(script)} any more: use {MOVED[key]}."
        others = [o for o in overrides if not o.lstrip("+~").startswith(key + "=")]
        try:
            composed = compose(script, others)
            keys = _flat_keys(composed)
        except Exception:  # noqa: BLE001 - the suggestion is a courtesy
            composed, keys = None, []
        parent = key.rpartition(".")[0]
        if composed is not None and (link := _interpolated_prefix(composed, key)) is not None:
            node, target = link  # e.g. callbacks.sample_grid.sampler: ${sampler}
            rest = key[len(node) + 1:]
            return (f"{key}: {node} is ${{{target}}}, the run's {target}, so it has no keys of its own: set "
                    f"{target}.{rest}=... (for both), or give {node} its own node, e.g. "
                    f"'{node}={{name: respaced, steps: 50}}'.")
        if composed is not None and parent.rpartition(".")[2] == "sampler":  # each sampler has its own keys
            node = OmegaConf.select(composed, parent)
            if node is not None and "name" in node:  # the sampler's own check says what is valid
                try:
                    SamplerConfig.from_node({**OmegaConf.to_container(node), key.rpartition(".")[2]: None})
                except ValueError as err:
                    return str(err)
        absent = ""  # the outermost node of `key` that this command lacks (`diffusion` of sample.py's T)
        while parent and parent not in keys:
            absent, parent = parent, parent.rpartition(".")[0]
        lacking = f": it has no {absent} settings" if absent else ""
        if absent.split(".")[0] in FROM_RUN and composed is not None and "ckpt_path" in composed:
            lacking += " (the network, noise schedule and objective are the checkpoint's own, set when it was trained)"
        valid = [k for k in keys if k.rpartition(".")[0] == parent and k != "hydra"]
        where = f"under {parent}" if parent else "at the top level"
        ancestors = {key.rsplit(".", n)[0] for n in range(1, key.count(".") + 1)}  # `fid.foo` is not near `fid`
        return (f"{key}: no such option of {command(script)}{lacking}."
                f"{suggest(key, [k for k in keys if k not in ancestors])} Valid keys {where}: {', '.join(valid)}. "
                f"(`{command(script)} --help` lists the options and their defaults; +key=value adds a key that is "
                "not in the config.)")
    if m := re.search(r"Could not find '([^']+)/([^']+)'", text):
        group, option = m.groups()
        valid = re.findall(r"^\t(\S+)$", text, re.M)
        if group == "recipe":  # train.py's data=NAME picks conf/recipe/NAME.yaml (conf/train.yaml's defaults)
            return (f"data={option}: {command(script)} has no training recipe for it (conf/recipe/{option}.yaml); "
                    f"valid data options: {', '.join(v for v in valid if v in group_options(CONF_DIR, 'data'))}.")
        return f"{group}={option}: no such option. Valid {group} options: {', '.join(valid)}.{suggest(option, valid)}"
    if m := re.search(r"Error merging override (\S+?)=(.*)", text):
        key, value = m.groups()
        why = str(e.__cause__ or "").strip().splitlines()
        return (f"{key}={value}: {why[0] if why else 'invalid value'}. conf/{script}.yaml (or the group's YAML) "
                "documents the option and its type.")
    if m := re.search(r"You must specify '([^']+)'", text):
        group = m.group(1)
        valid = re.findall(r"^\t(\S+)$", text, re.M)
        return f"{group}: choose one: {', '.join(f'{group}={v}' for v in valid)}."
    return text.split("\nConfig search path")[0]


def _interpolated_prefix(cfg: Any, key: str) -> tuple[str, str] | None:
    """``(prefix, target)`` for the first prefix of ``key`` whose value in ``cfg`` is an interpolation
    ``${target}`` (an override below it cannot be applied), else ``None``."""
    from omegaconf import DictConfig, OmegaConf

    parts = key.split(".")
    node = cfg
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node, DictConfig) or part not in node:
            return None
        if OmegaConf.is_interpolation(node, part):
            raw = OmegaConf.to_container(node, resolve=False)[part]
            m = re.fullmatch(r"\$\{([\w.]+)\}", str(raw))
            return (".".join(parts[: i + 1]), m.group(1)) if m else None
        node = node[part]
    return None


