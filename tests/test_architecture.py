"""The layering of ``src/ddpm`` (README "Layout"), read from the source with ``ast`` (nothing is
imported): every ``import`` counts, also the ones inside functions.

    entry points   train.py, sample.py (through commands.shell), ddpm/<tool>.py (python -m ddpm.<tool>), the
                   console scripts
    commands       ddpm/commands/shell.py (the Hydra apps of train.py and sample.py)
    applications   ddpm/commands/: training, sampling, nll, figures, report, frontier, export, convert,
                   build_refstats
    services       ddpm/services/: loading, generate, runtime, builders, resume, metrics, callbacks, interop
    core           ddpm/core/: module, data, diffusion, nets, io, config, checks, cli, seeds, rundir, presets

A module imports from its own layer or the layers below; no application imports another; no import cycles;
``ddpm.core.diffusion`` and ``ddpm.core.nets`` (the math and the network) import only torch, numpy and the standard
library, and ``ddpm.core.seeds`` (the seed hashes) only numpy and the standard library: none of them imports
anything else of ``ddpm``; training, callbacks and data never import the sample.py application; data never
imports metrics or the diffusion math. The checker is also run on
small made-up import graphs with one back-edge each, so the test is known to fail on one.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# the folders are the layers: src/ddpm/core, src/ddpm/services, src/ddpm/commands (the applications and the shell
# of train.py/sample.py), and at the package top one entry module per `python -m ddpm.<tool>`
APPLICATIONS = ("training", "sampling", "nll", "figures", "report", "frontier", "export", "convert", "build_refstats")
ENTRY_POINTS = ("nll", "figures", "report", "frontier", "export", "convert", "build_refstats")
LAYERS: dict[str, tuple[str, ...]] = {
    "core": ("ddpm", "ddpm.core"),
    "services": ("ddpm.services",),
    "applications": ("ddpm.commands", *(f"ddpm.commands.{a}" for a in APPLICATIONS)),
    "commands": ("ddpm.commands.shell",),
    "entry points": tuple(f"ddpm.{tool}" for tool in ENTRY_POINTS),
}
RANK = {"core": 0, "services": 1, "applications": 2, "commands": 3, "entry points": 4}
PURE = ("ddpm.core.diffusion", "ddpm.core.nets", "ddpm.core.seeds")  # torch, numpy and the standard library only, nothing else
NO_TORCH = ("ddpm.core.seeds",)  # numpy and the standard library only
FORBIDDEN = {  # importer prefix -> imported prefixes it must never reach directly
    "ddpm.commands.training": ("ddpm.commands.sampling",),
    "ddpm.services.callbacks": ("ddpm.commands.sampling",),
    "ddpm.core.data": ("ddpm.commands.sampling", "ddpm.services.metrics", "ddpm.core.diffusion"),  # the seed hash is in ddpm.core.seeds
}


def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:`` (imports for type checkers only, which
    run never and so make no import edge)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def read_imports(src: Path = SRC) -> dict[str, set[str]]:
    """``{module: {imported names}}`` for every module of ``src/ddpm`` (absolute names; relative imports
    resolved; ``from ddpm import x`` names ``ddpm.x`` when that is a module)."""
    files = {module_name(p, src): p for p in (src / "ddpm").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        names: set[str] = set()
        for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                names.add(base)
                names.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in files)
        graph[mod] = names
    return graph


def owner(name: str, prefixes) -> str | None:
    """The longest of ``prefixes`` that ``name`` is or lies under."""
    best = None
    for p in prefixes:
        if (name == p or name.startswith(p + ".")) and (best is None or len(p) > len(best)):
            best = p
    return best


def layer_of(name: str) -> str | None:
    hits = [(owner(name, mods), layer) for layer, mods in LAYERS.items()]
    hits = [(o, layer) for o, layer in hits if o is not None and (o != "ddpm" or name == "ddpm")]
    return max(hits, key=lambda h: len(h[0]))[1] if hits else None


def internal(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph restricted to modules of the package (an import of a name inside a module counts as the
    module)."""
    out = {}
    for mod, names in graph.items():
        targets = {owner(n, graph) for n in names if n == "ddpm" or n.startswith("ddpm.")}
        out[mod] = {t for t in targets if t is not None and t != mod}
    return out


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import that breaks a rule of the module docstring, as ``importer -> imported: why``."""
    bad = []
    edges = internal(graph)
    for mod, targets in sorted(edges.items()):
        mine = layer_of(mod)
        if mine is None:
            bad.append(f"{mod}: in no layer (add it to LAYERS in tests/test_architecture.py)")
            continue
        for t in sorted(targets):
            theirs = layer_of(t)
            if theirs is not None and RANK[theirs] > RANK[mine]:
                bad.append(f"{mod} -> {t}: {mine} imports from {theirs}")
            elif mine == theirs == "applications" and owner(t, LAYERS["applications"]) != owner(
                    mod, LAYERS["applications"]):
                bad.append(f"{mod} -> {t}: an application imports another application")
            for importer, banned in FORBIDDEN.items():
                if owner(mod, (importer,)) and owner(t, banned):
                    bad.append(f"{mod} -> {t}: {importer} must not import {owner(t, banned)}")
    for mod, names in sorted(graph.items()):
        if owner(mod, PURE):
            for n in sorted(names):
                top = n.split(".")[0]
                allowed = ("numpy", "__future__") if owner(mod, NO_TORCH) else ("torch", "numpy", "__future__")
                if top not in allowed and top not in sys.stdlib_module_names and owner(n, PURE) != owner(mod, PURE):
                    bad.append(f"{mod} -> {n}: {owner(mod, PURE)} imports only torch, numpy and the standard "
                               "library (and itself)")
    bad += [f"import cycle: {' <-> '.join(c)}" for c in find_cycles(edges)]
    return bad


def test_src_ddpm_keeps_its_layers():
    graph = read_imports()
    assert "ddpm.commands.sampling" in graph and "ddpm.core.diffusion.gaussian" in graph  # the reader found the package
    assert layering_violations(graph) == []


@pytest.mark.parametrize(
    "graph, expected",
    [
        ({"ddpm.core.module": {"ddpm.commands.sampling"}, "ddpm.commands.sampling": {"ddpm.core.module"}}, "core imports from applications"),
        ({"ddpm.core.data.digits": {"ddpm.services.metrics.digits"}, "ddpm.services.metrics.digits": set()},
         "ddpm.core.data must not import ddpm.services.metrics"),
        ({"ddpm.services.callbacks.fid": {"ddpm.commands.sampling"}, "ddpm.commands.sampling": set()}, "services imports from applications"),
        ({"ddpm.commands.figures": {"ddpm.commands.sampling"}, "ddpm.commands.sampling": set()},
         "an application imports another"),
        ({"ddpm.services.metrics.fid": {"ddpm.services.metrics.refstats"}, "ddpm.services.metrics.refstats": {"ddpm.services.metrics.fid"}},
         "import cycle"),
        ({"ddpm.core.diffusion.gaussian": {"lightning"}}, "imports only torch, numpy"),
        ({"ddpm.core.nets.unet": {"ddpm.core.diffusion"}, "ddpm.core.diffusion": set()}, "imports only torch, numpy"),
        ({"ddpm.newthing": set()}, "in no layer"),
        ({"ddpm.commands.training": {"ddpm.commands.shell"}, "ddpm.commands.shell": set()}, "applications imports from commands"),
        ({"ddpm.core.data.base": {"ddpm.core.diffusion.noise"}, "ddpm.core.diffusion.noise": set()},
         "ddpm.core.data must not import ddpm.core.diffusion"),
        ({"ddpm.core.seeds": {"torch"}}, "imports only torch, numpy"),
        ({"ddpm.core.seeds": {"ddpm.core.diffusion"}, "ddpm.core.diffusion": set()}, "imports only torch, numpy"),
        ({"ddpm.core.diffusion.noise": {"ddpm.core.seeds"}, "ddpm.core.seeds": set()}, "imports only torch, numpy"),
        ({"ddpm.core.nets.unet": {"ddpm.core.seeds"}, "ddpm.core.seeds": set()}, "imports only torch, numpy"),
    ],
)
def test_the_checker_fails_on_a_back_edge(graph, expected):
    assert any(expected in v for v in layering_violations(graph)), layering_violations(graph)


def test_the_checker_reads_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "ddpm"
    (pkg / "core" / "diffusion").mkdir(parents=True)
    (pkg / "commands").mkdir()
    for init in (pkg, pkg / "core", pkg / "commands"):
        (init / "__init__.py").write_text("")
    (pkg / "core" / "diffusion" / "__init__.py").write_text("from .gaussian import G\n")
    (pkg / "core" / "diffusion" / "gaussian.py").write_text("G = 1\ndef f():\n    from ddpm.commands.sampling import x\n")
    (pkg / "commands" / "sampling.py").write_text("from ddpm.core import diffusion\n")
    graph = read_imports(tmp_path)
    assert graph["ddpm.core.diffusion"] >= {"ddpm.core.diffusion.gaussian"}
    assert "ddpm.commands.sampling" in graph["ddpm.core.diffusion.gaussian"]
    assert "ddpm.core.diffusion" in graph["ddpm.commands.sampling"]
    assert any("core imports from applications" in v for v in layering_violations(graph))


# ------------------------------------------------------------------------------------- Lightning's public API
def _imported_names(tree: ast.AST) -> dict[str, str]:
    """``{local name: fully qualified name}`` of a module's imports."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                out[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                out[a.asname or a.name] = f"{node.module}.{a.name}"
    return out


def _qualified(node: ast.expr, imports: dict[str, str]) -> str:
    if isinstance(node, ast.Name):
        return imports.get(node.id, node.id)
    if isinstance(node, ast.Attribute):
        return f"{_qualified(node.value, imports)}.{node.attr}"
    return ""


def _lightning_private_names(qualified_base: str) -> set[str]:
    """The private attributes and methods that the Lightning class ``qualified_base`` and its Lightning bases
    use on ``self`` (read from their source)."""
    import importlib
    import inspect
    import re

    module_name, _, cls_name = qualified_base.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError):
        return set()
    names: set[str] = set()
    for klass in inspect.getmro(cls):
        if klass.__module__.split(".")[0] not in ("lightning", "pytorch_lightning"):
            continue
        source = inspect.getsource(klass)
        names |= set(re.findall(r"self\.(_[A-Za-z]\w*)", source)) | set(re.findall(r"def (_[A-Za-z]\w*)", source))
    return names


def lightning_private_uses(files: dict[str, str]) -> list[str]:
    """``file:line: x._name`` for every private attribute of a Lightning object used in ``files`` (``{path:
    source}``): ``self._name`` in a class with a Lightning base where Lightning uses ``_name`` itself, and
    ``x._name`` on any other object (not a module) when nothing in ``files`` defines ``_name``."""
    trees = {path: ast.parse(text) for path, text in files.items()}
    ours: set[str] = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name.startswith("_"):
                ours.add(node.name)
            elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and node.attr.startswith("_")
                  and isinstance(node.value, ast.Name) and node.value.id == "self"):
                ours.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and node.id.startswith("_"):
                ours.add(node.id)
    bad = []
    for path, tree in trees.items():
        imports = _imported_names(tree)
        lightning_classes = []
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
            private: set[str] = set()
            for base in cls.bases:
                q = _qualified(base, imports)
                if q.startswith(("lightning.", "pytorch_lightning.")):
                    private |= _lightning_private_names(q)
            lightning_classes.append((cls, private))
        for cls, private in lightning_classes:
            for node in ast.walk(cls):
                if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"
                        and node.attr in private):
                    bad.append(f"{path}:{node.lineno}: self.{node.attr} (Lightning's, in class {cls.name})")
            for node in cls.body:
                if isinstance(node, ast.FunctionDef) and node.name in private:
                    bad.append(f"{path}:{node.lineno}: def {node.name} (overrides Lightning's, in class {cls.name})")
        for node in ast.walk(tree):  # getattr(x, "_name"), hasattr, setattr
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in ("getattr", "hasattr", "setattr") and len(node.args) >= 2
                    and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
                    and node.args[1].value.startswith("_") and not node.args[1].value.endswith("_")
                    and node.args[1].value not in ours):
                bad.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.endswith("_")):
                continue  # (dunders and Hydra's keys such as cfg._target_ are public)
            receiver = node.value
            if isinstance(receiver, ast.Name) and (receiver.id in ("self", "cls") or receiver.id in imports):
                continue  # our own object, or a module (torch._foreach_norm)
            if node.attr not in ours:
                bad.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
    return sorted(set(bad))


def test_src_uses_only_lightnings_public_api():
    files = {str(p.relative_to(SRC)): p.read_text() for p in (SRC / "ddpm").rglob("*.py")}
    assert lightning_private_uses(files) == []


@pytest.mark.parametrize("source, expected", [
    ("def f(trainer):\n    return trainer._logger_connector.should_update_logs\n", "trainer._logger_connector"),
    ("def f(lg, w):\n    lg._experiment = w\n", "lg._experiment"),
    ("import lightning as L\nclass M(L.LightningModule):\n    def f(self):\n        return self._trainer\n",
     "self._trainer (Lightning's"),
    ("from lightning.pytorch.callbacks import ModelCheckpoint\nclass C(ModelCheckpoint):\n"
     "    def f(self, trainer):\n        self._last_global_step_saved = trainer.global_step\n",
     "self._last_global_step_saved"),
    ("def f(trainer):\n    return trainer.fit_loop._should_accumulate()\n", "_should_accumulate"),
    ("def f(cb):\n    return getattr(cb, '_last_global_step_saved', None)\n", "_last_global_step_saved"),
    ("from lightning.pytorch.loggers.csv_logs import ExperimentWriter\nclass W(ExperimentWriter):\n"
     "    def _check_log_dir_exists(self):\n        pass\n", "def _check_log_dir_exists"),
])
def test_the_private_api_checker_fails_on_one(source, expected):
    assert any(expected in v for v in lightning_private_uses({"x.py": source})), lightning_private_uses(
        {"x.py": source})


def test_the_private_api_checker_leaves_our_own_and_modules_alone():
    source = ("import torch\nimport lightning as L\nclass M(L.LightningModule):\n    def __init__(self):\n"
              "        self._streak = 0\n    def f(self, x):\n        return torch._foreach_norm(x), self._streak\n")
    assert lightning_private_uses({"x.py": source}) == []


# ------------------------------------------------------------------------------- one spelling of each thing
RUN_LAYOUT = ("checkpoints", "last.ckpt")  # ddpm.core.rundir's names
LAYOUT_ALLOWED = {
    "ddpm/core/rundir.py",
}


def _sources() -> dict[str, str]:
    return {str(p.relative_to(SRC)): p.read_text() for p in (SRC / "ddpm").rglob("*.py")}


def layout_spellings(files: dict[str, str]) -> list[str]:
    """``file:line`` of every string ``"checkpoints"`` / ``"last.ckpt"`` outside ddpm.core.rundir (docstrings aside)."""
    bad = []
    for path, text in files.items():
        if path in LAYOUT_ALLOWED:
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Constant) and node.value in RUN_LAYOUT:
                bad.append(f"{path}:{node.lineno}: {node.value!r} (use ddpm.core.rundir)")
    return bad


def argv_parsing(files: dict[str, str]) -> list[str]:
    """``file:line`` of every read of ``sys.argv`` outside ddpm.core.cli (the Hydra apps' shell): a command takes its
    settings through Hydra, or its paths through argparse, never through a parser of its own."""
    bad = []
    for path, text in files.items():
        if path == "ddpm/core/cli.py":
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Attribute) and node.attr == "argv" and ast.unparse(node.value) == "sys":
                bad.append(f"{path}:{node.lineno}: sys.argv")
    return bad


def test_the_run_directory_layout_is_spelled_only_in_rundir():
    assert layout_spellings(_sources()) == []
    assert sorted(layout_spellings({"ddpm/x.py": 'p = run / "checkpoints" / "last.ckpt"\n'})) == [
        "ddpm/x.py:1: 'checkpoints' (use ddpm.core.rundir)", "ddpm/x.py:1: 'last.ckpt' (use ddpm.core.rundir)"]


def test_no_command_parses_sys_argv_itself():
    assert argv_parsing(_sources()) == []
    assert argv_parsing({"ddpm/x.py": "import sys\nfor a in sys.argv[1:]:\n    k, _, v = a.partition('=')\n"}) == [
        "ddpm/x.py:2: sys.argv"]


# ------------------------------------------------------------------------------- bench/ uses only public names
BENCH = SRC.parent / "bench"


def bench_private_uses(files: dict[str, str]) -> list[str]:
    """``file:line`` of every private ``ddpm`` name a script reaches: ``from ddpm.x import _name``, a private
    module (``ddpm.x._y``), or ``alias._name`` on an imported ``ddpm`` module. bench/ measures what users get, so
    it goes through the same public names (a private helper a benchmark needs is made public where it lives)."""
    bad = []

    def private(dotted: str) -> bool:
        return any(p.startswith("_") and not (p.startswith("__") and p.endswith("__")) for p in dotted.split("."))

    for path, text in files.items():
        aliases: set[str] = set()
        for node in ast.walk(ast.parse(text, path)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ddpm":
                for a in node.names:
                    if private(f"{node.module}.{a.name}"):
                        bad.append(f"{path}:{node.lineno}: from {node.module} import {a.name}")
                    else:
                        aliases.add(a.asname or a.name)  # may be a module (from ddpm.services.metrics import fid)
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] == "ddpm":
                        if private(a.name):
                            bad.append(f"{path}:{node.lineno}: import {a.name}")
                        aliases.add(a.asname or a.name.split(".")[0])
        for node in ast.walk(ast.parse(text, path)):
            if (isinstance(node, ast.Attribute) and private(node.attr)
                    and ast.unparse(node.value).split(".")[0] in aliases):
                bad.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
    return sorted(set(bad))


def test_bench_uses_only_public_ddpm_names():
    files = {f"bench/{p.name}": p.read_text() for p in sorted(BENCH.glob("*.py"))}
    assert files and bench_private_uses(files) == []


@pytest.mark.parametrize("source, expected", [
    ("from ddpm.commands.report.findings import _Scorers, set_images\n", "from ddpm.commands.report.findings import _Scorers"),
    ("import ddpm.services.metrics._private as p\n", "import ddpm.services.metrics._private"),
    ("from ddpm import frontier\nx = frontier._fmt_spread({})\n", "frontier._fmt_spread"),
    ("import ddpm.commands.frontier\nx = ddpm.commands.frontier._plot\n", "ddpm.commands.frontier._plot"),
])
def test_the_bench_checker_fails_on_one(source, expected):
    found = bench_private_uses({"bench/x.py": source})
    assert len(found) == 1 and expected in found[0], found


def test_the_bench_checker_leaves_public_names_and_other_packages_alone():
    source = ("import torch\nfrom ddpm.services.metrics import pooled\nfrom ddpm.commands.report.findings import Scorers\n"
              "x = torch._foreach_norm\ny = pooled.verdict\nclass A:\n    def f(self):\n        return self._z\n")
    assert bench_private_uses({"bench/x.py": source}) == []
