"""The example notebooks run top to bottom on the demo's quick runs, and are stored without outputs."""

from __future__ import annotations

from pathlib import Path

import pytest

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
    # Every output goes into one temporary directory that the last cell removes.
    assert "tempfile.TemporaryDirectory(" in source and "mkdtemp" not in source
    assert "opdlens-demo-quick" not in source
    assert code[-1].source.startswith("scratch.cleanup()")


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's quick runs, generated once for both notebooks."""
    from opdlens.demo import generate_runs

    out = tmp_path_factory.mktemp("demo") / "quick"
    generate_runs(out, quick=True, progress=False)
    return out


def _tree(path: Path) -> set[Path]:
    return set(path.rglob("*"))


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name: str, demo_dir: Path, tmp_path: Path, monkeypatch) -> None:
    NotebookClient = pytest.importorskip("nbclient").NotebookClient

    monkeypatch.setenv("OPDLENS_DEMO_DIR", str(demo_dir))
    tmp = tmp_path / "tmp"  # the kernel's temporary directory
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    before = {"notebooks": _tree(NOTEBOOKS), "demo": _tree(demo_dir)}
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(nb, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd)}})  # fmt: skip
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]  # fmt: skip
    assert not errors
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
    assert not list(cwd.iterdir())
    assert _tree(NOTEBOOKS) == before["notebooks"] and _tree(demo_dir) == before["demo"]
