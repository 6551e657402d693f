"""The example notebooks run top to bottom on the demo's quick runs, and are stored without outputs."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

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


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's quick runs, generated once for both notebooks."""
    from opdlens.demo import generate_runs

    out = tmp_path_factory.mktemp("demo") / "quick"
    generate_runs(out, quick=True, progress=False)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name: str, demo_dir: Path, tmp_path: Path, monkeypatch) -> None:
    from nbclient import NotebookClient

    monkeypatch.setenv("OPDLENS_DEMO_DIR", str(demo_dir))
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(nb, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})  # fmt: skip
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]  # fmt: skip
    assert not errors
    plotting = [c for c in nb.cells
                if c.cell_type == "code" and c.source.splitlines()[-1].startswith("plots.")]  # fmt: skip
    assert plotting and all(
        any("image/png" in o.get("data", {}) for o in c.outputs) for c in plotting
    )  # every cell ending in a plot displayed its figure
    assert not list(tmp_path.glob("opdlens-demo-quick"))  # the shared demo was used
