"""The package's import graph has no cycle, counting imports inside functions and for annotations."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import opdlens

PACKAGE = Path(opdlens.__file__).parent


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    """Ids of nodes under `if TYPE_CHECKING:`: imports for annotations that never run."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def _imported(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    """Absolute names an import statement may load: the module and each `from` name."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    return [prefix] + [f"{prefix}.{alias.name}" for alias in node.names]


def import_graph(root: Path = PACKAGE, *, type_checking: bool = True) -> dict[str, set[str]]:
    """Module → the package's modules it imports, at module level or inside any function.

    With `type_checking`, imports under `if TYPE_CHECKING:` count too: an annotation that names a
    class of a module above is a dependency on it, even if it never runs. Names a package's
    `__getattr__` loads on first access (`_lazy.lazy_getattr`) are strings, not imports.
    """
    files = {_module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        skip = set() if type_checking else _type_checking_nodes(tree)
        deps: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in skip:
                is_package = path.name == "__init__.py"
                deps.update(n for n in _imported(module, is_package, node) if n in files)
        graph[module] = deps - {module}
    return graph


def below(graph: dict[str, set[str]], module: str) -> set[str]:
    """`module` and every module it reaches through imports."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += graph[m]
    return seen


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, …, a], or None when the graph is acyclic."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


@pytest.mark.parametrize("type_checking", [True, False])
def test_the_import_graph_of_opdlens_is_acyclic(type_checking: bool) -> None:
    graph = import_graph(type_checking=type_checking)
    assert "opdlens.analysis.foresight" in graph["opdlens.analysis.foresight_write"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def _under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_analysis_imports_nothing_of_extrapolation() -> None:
    """The only dependency between the two runs the other way: extrapolation uses linalg."""
    graph = import_graph()
    up = {
        m: sorted(d for d in deps if _under(d, "opdlens.extrapolation"))
        for m, deps in graph.items()
        if _under(m, "opdlens.analysis")
    }
    assert "opdlens.analysis.foresight" in up
    assert not {m: deps for m, deps in up.items() if deps}


@pytest.mark.parametrize("module", ["opdlens.schedule", "opdlens.selection", "opdlens.run"])
def test_schedule_selection_and_run_sit_below_analysis_and_extrapolation(module: str) -> None:
    reached = below(import_graph(), module)
    above = ("opdlens.analysis", "opdlens.extrapolation", "opdlens.viz", "opdlens.cli")
    assert not sorted(m for m in reached if any(_under(m, p) for p in above))
    assert "opdlens" not in reached  # the facade imports everything


def test_the_checker_sees_function_level_and_relative_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from .sub.b import g\n"
        "def f():\n    from .sub import b\n    return b\n"
    )
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def g():\n    from .. import a\n    return a\n")
    graph = import_graph(pkg, type_checking=False)
    assert graph["pkg.a"] == {"pkg.sub", "pkg.sub.b"}  # the TYPE_CHECKING import is not counted
    assert import_graph(pkg)["pkg.a"] == {"pkg.sub", "pkg.sub.b"}  # by default it is
    (pkg / "sub" / "b.py").write_text("def g():\n    return 1\n")
    assert import_graph(pkg, type_checking=False)["pkg.sub.b"] == set()
    (pkg / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import f\n"
    )
    assert find_cycle(import_graph(pkg, type_checking=False)) is None
    assert find_cycle(import_graph(pkg)) is not None  # a cycle through an annotation only
    (pkg / "sub" / "b.py").write_text("def g():\n    from .. import a\n    return a\n")
    graph = import_graph(pkg)
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1] and {"pkg.a", "pkg.sub.b"} <= set(cycle)
    (pkg / "sub" / "b.py").write_text("def g():\n    return 1\n")
    assert find_cycle(import_graph(pkg)) is None


@pytest.mark.parametrize("module", ["opdlens.analysis.analyze", "opdlens.provenance"])
def test_modules_that_take_a_run_do_not_reach_the_facade(module: str) -> None:
    reached = below(import_graph(), module)
    assert "opdlens.run" in reached  # for its annotations
    assert "opdlens" not in reached


def test_viz_only_draws() -> None:
    """viz/ draws DataFrames: it runs no SVD, opens no cache or checkpoint, runs no sweep."""
    graph = import_graph(type_checking=False)  # viz may name analysis' types in annotations
    forbidden = {
        "opdlens.analysis.linalg", "opdlens.analysis.cache", "opdlens.analysis.sweep",
        "opdlens.analysis.results", "opdlens.analysis.spectra", "opdlens.analysis.write",
        "opdlens.run", "opdlens.survey", "opdlens.io.layouts", "opdlens.io.sources",
    }  # fmt: skip
    viz = [m for m in graph if m == "opdlens.viz" or m.startswith("opdlens.viz.")]
    assert "opdlens.viz.figures" in viz and "opdlens.viz.report" in viz
    reached = {m: sorted(graph[m] & forbidden) for m in viz}
    assert not {m: deps for m, deps in reached.items() if deps}


def runtime_imports_from(
    package: str, prefixes: tuple[str, ...], root: Path = PACKAGE
) -> dict[str, list[str]]:
    """module of `package` → the names it imports at run time from modules under `prefixes`."""
    files = {_module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    out: dict[str, list[str]] = {}
    for module, path in files.items():
        if module != package and not module.startswith(package + "."):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        skip = _type_checking_nodes(tree)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in skip:
                names = _imported(module, path.name == "__init__.py", node)
                if names[0].startswith(prefixes):
                    out.setdefault(module, []).extend(names[1:] or names)
    return out


# The frame operations plots and analysis share (weighted and group means, group checks,
# foresight's anchor) live in opdlens.frames, below both.
def test_viz_takes_only_declarations_from_analysis_and_extrapolation() -> None:
    """The report path is cli → opdlens.report.load → (analysis, io) → viz: viz computes nothing
    that analysis or extrapolation own; at run time it takes constants (UPPER_CASE) from them,
    and types only under TYPE_CHECKING."""
    found = runtime_imports_from("opdlens.viz", ("opdlens.analysis", "opdlens.extrapolation"))
    computed = {m: {n.rsplit(".", 1)[-1] for n in names} for m, names in found.items()}
    computed = {m: {n for n in names if not n.isupper()} for m, names in computed.items()}
    assert {m: names for m, names in computed.items() if names} == {}
    # Only the command line, the demo and watch build the report's Sources; analysis and viz
    # never do.
    loaders = [m for m, deps in import_graph().items() if "opdlens.report.load" in deps]
    # (opdlens.report itself re-exports load_sources lazily.)
    assert sorted(loaders) == [
        "opdlens.cli.figure_args",
        "opdlens.cli.figures",
        "opdlens.demo.pipeline",
        "opdlens.follow",
        "opdlens.report",
    ]


TESTS = Path(__file__).parent
# Modules with no mirror test file of their own, and why.
NO_MIRROR = {
    "plots.py": "a re-export facade of viz's plot and figure functions, which tests/viz/ tests; "
    "that importing it stays light is tests/test_imports.py's check",
}


def mirror_test(module: Path, root: Path = PACKAGE, tests: Path = TESTS) -> Path:
    """opdlens/<pkg>/<mod>.py → tests/<pkg>/test_<mod>.py (a leading underscore dropped)."""
    rel = module.relative_to(root)
    return tests / rel.parent / f"test_{rel.stem.lstrip('_')}.py"


def missing_mirrors(root: Path = PACKAGE, tests: Path = TESTS) -> list[str]:
    """Modules of the package (not __init__ / __main__ / NO_MIRROR) without their mirror test file."""
    modules = [
        p for p in sorted(root.rglob("*.py")) if p.name not in ("__init__.py", "__main__.py")
    ]
    return [
        f"{p.relative_to(root)} -> {mirror_test(p, root, tests).relative_to(tests.parent)}"
        for p in modules
        if p.relative_to(root).as_posix() not in NO_MIRROR
        and not mirror_test(p, root, tests).is_file()
    ]


def test_every_module_has_its_mirror_test_file() -> None:
    missing = missing_mirrors()
    assert not missing, "modules without their tests/<pkg>/test_<module>.py:\n" + "\n".join(missing)
    assert all((PACKAGE / name).is_file() for name in NO_MIRROR)  # no entry outlives its module


def test_the_mirror_check_sees_packages_and_private_modules(tmp_path: Path) -> None:
    root, tests = tmp_path / "pkg", tmp_path / "tests"
    for name in ["__init__.py", "__main__.py", "_app.py", "io/__init__.py", "io/reader.py"]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("")
    assert missing_mirrors(root, tests) == [
        "_app.py -> tests/test_app.py", "io/reader.py -> tests/io/test_reader.py",
    ]  # fmt: skip
    (tests / "io").mkdir(parents=True)
    (tests / "test_app.py").write_text("")
    (tests / "test_reader.py").write_text("")  # not in the mirror's place
    assert missing_mirrors(root, tests) == ["io/reader.py -> tests/io/test_reader.py"]
    (tests / "io" / "test_reader.py").write_text("")
    assert missing_mirrors(root, tests) == []


# The report path: the loader, the figure set and page, their CLI, and each lens' report hooks.
REPORT_PATH = ("report/*.py", "viz/report.py", "viz/figures.py", "viz/save.py", "viz/analyses.py",
               "viz/sections.py", "cli/figures.py", "cli/figure_args.py")  # fmt: skip
LENS_HOOKS = ("report_figure", "report_section")


def wide_signatures(root: Path = PACKAGE, most: int = 6) -> list[str]:
    """Functions of the report path (and lens hooks anywhere in viz) with more than `most`
    parameters, self and cls not counted."""
    files = {p for pattern in REPORT_PATH for p in root.glob(pattern)}
    files |= {p for p in root.glob("viz/*.py") if any(h in p.read_text() for h in LENS_HOOKS)}
    out = []
    for path in sorted(files):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            whole = path.parent.name != "viz" or f"viz/{path.name}" in REPORT_PATH
            if not whole and node.name not in LENS_HOOKS:
                continue
            a = node.args
            names = [x.arg for x in [*a.posonlyargs, *a.args, *a.kwonlyargs]
                     if x.arg not in ("self", "cls")] + [x.arg for x in (a.vararg, a.kwarg) if x]  # fmt: skip
            if len(names) > most:
                out.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({len(names)})")
    return out


def test_every_signature_in_the_report_path_takes_at_most_six_parameters() -> None:
    assert wide_signatures() == []


def test_the_signature_check_sees_a_wide_function(tmp_path: Path) -> None:
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "load.py").write_text("def f(a, b, c, d, e, f, g): ...\n")
    assert wide_signatures(tmp_path) == ["report/load.py:1 f (7)"]


# Imported by opdlens but installed by the declared dependency named, not declared itself.
TRANSITIVE = {"cycler": "matplotlib"}
UNDECLARABLE_EXTRAS = {"test", "bench"}  # opdlens' own code may not need what only these bring


def third_party_imports(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Top-level names of the non-stdlib modules the package imports (annotations' included),
    each with the files importing it."""
    import sys

    found: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for top in {n.split(".")[0] for n in names}:
                if top not in sys.stdlib_module_names and top != root.name:
                    found.setdefault(top, set()).add(str(path.relative_to(root.parent)))
    return found


def declared_requirements(dist: str = "opdlens") -> set[str]:
    """Names of the installed distribution's requirements, its dev-only extras left out."""
    import re
    from importlib.metadata import requires

    names = set()
    for req in requires(dist) or []:
        extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", req)
        if extra is None or extra.group(1) not in UNDECLARABLE_EXTRAS:
            names.add(re.split(r"[\s<>=!~;\[(]", req, maxsplit=1)[0].lower().replace("-", "_"))
    return names


def test_every_third_party_import_is_a_declared_dependency() -> None:
    """A module that is only there by chance (typer 0.29 no longer installs click) would fail in
    a lean environment: every import opdlens makes must be one of its requirements."""
    declared = declared_requirements()
    assert {"torch", "safetensors", "typer", "ray", "transformers"} <= declared
    assert set(TRANSITIVE.values()) <= declared
    undeclared = {
        name: sorted(files)
        for name, files in third_party_imports().items()
        if name not in declared and name not in TRANSITIVE
    }
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_the_dependency_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "a.py").write_text(
        "import os.path\nfrom . import b\nfrom typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from pandas import DataFrame\n"
        "def f():\n    import click.exceptions\n    from numpy.linalg import norm\n"
    )
    assert third_party_imports(pkg) == {
        "click": {"pkg/a.py"},
        "numpy": {"pkg/a.py"},
        "pandas": {"pkg/a.py"},
    }
