"""The example notebooks run top to bottom on the demo's quick runs, and are stored without outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
from checkpoints import copy_demo

# Test extras: installed by scripts/test.sh; a leaner environment (a GPU node's, the version
# passes) skips these tests instead of failing to collect them.
nbformat = pytest.importorskip("nbformat")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ("explore_allocation.ipynb", "extrapolation.ipynb")


@pytest.mark.parametrize("name", NAMES)
def test_stored_without_outputs(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    source = "\n".join(c.source for c in code)
    assert "opdlens._" not in source and "OPDLENS_DEMO_DIR" in source  # public API, shared demo
    # An existing demo is reused (either preset); the quick one is trained only when none is found.
    assert source.index("map(finished_runs, places)") < source.index("generate_runs(")
    assert '"opdlens-demo"' in source and '"../opdlens-demo"' in source
    # Every output goes into one temporary directory that the last cell removes.
    assert "tempfile.TemporaryDirectory(" in source and "mkdtemp" not in source
    assert "opdlens-demo-quick" not in source
    assert code[-1].source.startswith("scratch.cleanup()")


def test_notebooks_cover_foresee_ablate_and_groups() -> None:
    source = {name: "\n".join(c.source for c in nbformat.read(NOTEBOOKS / name, as_version=4).cells
                               if c.cell_type == "code") for name in NAMES}  # fmt: skip
    assert "group_findings(" in source["explore_allocation.ipynb"]
    assert "plots.group_alignment_by_step(" in source["explore_allocation.ipynb"]
    for call in ("opdlens.foresee(", "plots.foresight_figure(", "opdlens.ablate(",
                 "plots.ablation_figure("):  # fmt: skip
        assert call in source["extrapolation.ipynb"], call


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory, quick_demo: Path) -> Path:
    """The demo's quick runs where `opdlens demo --quick --out opdlens-demo` puts them."""
    return copy_demo(quick_demo, tmp_path_factory.mktemp("demo") / "opdlens-demo" / "runs")


def _tree(path: Path) -> set[Path]:
    return set(path.rglob("*"))


# How each notebook finds the demo: OPDLENS_DEMO_DIR, or ./opdlens-demo in its directory.
FINDS = {"explore_allocation.ipynb": "env", "extrapolation.ipynb": "cwd"}


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name: str, demo_dir: Path, tmp_path: Path, monkeypatch) -> None:
    NotebookClient = pytest.importorskip("nbclient").NotebookClient

    tmp = tmp_path / "tmp"  # the kernel's temporary directory
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    if FINDS[name] == "env":
        monkeypatch.setenv("OPDLENS_DEMO_DIR", str(demo_dir))
        expected = demo_dir
    else:  # `opdlens demo --out opdlens-demo` run where the notebook runs
        monkeypatch.delenv("OPDLENS_DEMO_DIR", raising=False)
        (cwd / "opdlens-demo").symlink_to(demo_dir.parent, target_is_directory=True)
        expected = Path("opdlens-demo", "runs")  # found relative to the working directory
    before = {"notebooks": _tree(NOTEBOOKS), "demo": _tree(demo_dir)}
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(nb, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd)}})  # fmt: skip
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]  # fmt: skip
    assert not errors
    first = next(c for c in nb.cells if c.cell_type == "code")
    said = "".join(o.get("text", "") for o in first.outputs)
    assert said.strip() == f"reusing the demo runs in {expected}"  # nothing retrained
    plotting = [c for c in nb.cells
                if c.cell_type == "code" and c.source.splitlines()[-1].startswith("plots.")]  # fmt: skip
    assert plotting and all(
        any("image/png" in o.get("data", {}) for o in c.outputs) for c in plotting
    )  # every cell ending in a plot displayed its figure
    # Nothing left behind: not in the working directory, the notebooks, the demo runs or TMPDIR.
    last = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    removed = Path(last.removeprefix("removed ").strip())
    assert removed.parent == tmp and removed.name.startswith("opdlens-notebook-")
    assert not removed.exists() and not list(tmp.glob("opdlens-*"))
    assert [p.name for p in cwd.iterdir()] == ([] if FINDS[name] == "env" else ["opdlens-demo"])
    assert _tree(NOTEBOOKS) == before["notebooks"] and _tree(demo_dir) == before["demo"]
