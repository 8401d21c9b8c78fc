"""The layering of ``src/ddpm`` (README "Layout"), read from the source with ``ast`` (nothing is
imported): every ``import`` counts, also the ones inside functions.

    entry points   train.py, sample.py, python -m ddpm.<tool>
    applications   training, sampling, nll, figures, report, frontier
    services       loading, generate, runtime, metrics, callbacks, convert
    core           module, data, diffusion, nets, io, config, seeds

A module imports from its own layer or the layers below; no application imports another; no import cycles;
``ddpm.diffusion`` and ``ddpm.nets`` import only torch, numpy, the standard library and ``ddpm.seeds`` (the
seed hashes, which import only numpy and the standard library); training, callbacks and data never import the
sample.py application; data never imports metrics or the diffusion math. The checker is also run on
small made-up import graphs with one back-edge each, so the test is known to fail on one.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

LAYERS: dict[str, tuple[str, ...]] = {
    "core": ("ddpm", "ddpm.io", "ddpm.config", "ddpm.cli", "ddpm.module", "ddpm.data", "ddpm.diffusion", "ddpm.nets",
             "ddpm.seeds"),
    "services": ("ddpm.loading", "ddpm.generate", "ddpm.runtime", "ddpm.metrics", "ddpm.callbacks", "ddpm.convert"),
    "applications": ("ddpm.training", "ddpm.sampling", "ddpm.nll", "ddpm.figures", "ddpm.report", "ddpm.frontier"),
}
RANK = {"core": 0, "services": 1, "applications": 2}
PURE = ("ddpm.diffusion", "ddpm.nets", "ddpm.seeds")  # torch, numpy and the standard library only
BASE = ("ddpm.seeds",)  # pure leaves that the other pure packages may import (numpy and the standard library)
FORBIDDEN = {  # importer prefix -> imported prefixes it must never reach directly
    "ddpm.training": ("ddpm.sampling",),
    "ddpm.callbacks": ("ddpm.sampling",),
    "ddpm.data": ("ddpm.sampling", "ddpm.metrics", "ddpm.diffusion"),  # the seed hash is in ddpm.seeds
}


def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def read_imports(src: Path = SRC) -> dict[str, set[str]]:
    """``{module: {imported names}}`` for every module of ``src/ddpm`` (absolute names; relative imports
    resolved; ``from ddpm import x`` names ``ddpm.x`` when that is a module)."""
    files = {module_name(p, src): p for p in (src / "ddpm").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
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
                allowed = ("numpy", "__future__") if owner(mod, BASE) else ("torch", "numpy", "__future__")
                if top not in allowed and top not in sys.stdlib_module_names and not (
                        owner(n, PURE) == owner(mod, PURE) or (owner(n, BASE) and not owner(mod, BASE))):
                    bad.append(f"{mod} -> {n}: {owner(mod, PURE)} imports only torch, numpy and the standard "
                               "library (and itself, and ddpm.seeds)")
    bad += [f"import cycle: {' <-> '.join(c)}" for c in find_cycles(edges)]
    return bad


def test_src_ddpm_keeps_its_layers():
    graph = read_imports()
    assert "ddpm.sampling" in graph and "ddpm.diffusion.gaussian" in graph  # the reader found the package
    assert layering_violations(graph) == []


@pytest.mark.parametrize(
    "graph, expected",
    [
        ({"ddpm.module": {"ddpm.sampling"}, "ddpm.sampling": {"ddpm.module"}}, "core imports from applications"),
        ({"ddpm.data.digits": {"ddpm.metrics.digits"}, "ddpm.metrics.digits": set()},
         "ddpm.data must not import ddpm.metrics"),
        ({"ddpm.callbacks.fid": {"ddpm.sampling"}, "ddpm.sampling": set()}, "services imports from applications"),
        ({"ddpm.figures": {"ddpm.sampling"}, "ddpm.sampling": set()}, "an application imports another"),
        ({"ddpm.metrics.fid": {"ddpm.metrics.refstats"}, "ddpm.metrics.refstats": {"ddpm.metrics.fid"}},
         "import cycle"),
        ({"ddpm.diffusion.gaussian": {"lightning"}}, "imports only torch, numpy"),
        ({"ddpm.nets.unet": {"ddpm.diffusion"}, "ddpm.diffusion": set()}, "imports only torch, numpy"),
        ({"ddpm.newthing": set()}, "in no layer"),
        ({"ddpm.data.base": {"ddpm.diffusion.noise"}, "ddpm.diffusion.noise": set()},
         "ddpm.data must not import ddpm.diffusion"),
        ({"ddpm.seeds": {"torch"}}, "imports only torch, numpy"),
        ({"ddpm.seeds": {"ddpm.diffusion"}, "ddpm.diffusion": set()}, "imports only torch, numpy"),
    ],
)
def test_the_checker_fails_on_a_back_edge(graph, expected):
    assert any(expected in v for v in layering_violations(graph)), layering_violations(graph)


def test_the_checker_reads_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "ddpm"
    (pkg / "diffusion").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "diffusion" / "__init__.py").write_text("from .gaussian import G\n")
    (pkg / "diffusion" / "gaussian.py").write_text("G = 1\ndef f():\n    from ddpm.sampling import x\n")
    (pkg / "sampling.py").write_text("from ddpm import diffusion\n")
    graph = read_imports(tmp_path)
    assert graph["ddpm.diffusion"] >= {"ddpm.diffusion.gaussian"}
    assert "ddpm.sampling" in graph["ddpm.diffusion.gaussian"]
    assert "ddpm.diffusion" in graph["ddpm.sampling"]
    assert any("core imports from applications" in v for v in layering_violations(graph))
