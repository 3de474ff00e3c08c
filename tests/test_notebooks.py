"""The teaching notebooks run top to bottom, headless, in their small-budget mode, and keep their widgets.

Each notebook is executed with nbclient on a kernel of *this* interpreter (a kernelspec written to a temporary
folder, so no user-level kernel registration is needed or used), with ``PRUNEKIT_NB_SMALL=1`` and a fresh
``PRUNEKIT_HOME``. Executed copies are written to ``test-artifacts/notebooks/`` for inspection.

Notebooks are committed without outputs; after running one by hand, strip it with
``python tests/test_notebooks.py --strip notebooks/*.ipynb``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("ipywidgets")

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
ARTIFACTS = REPO_ROOT / "test-artifacts" / "notebooks"
WIDGET_MIME = "application/vnd.jupyter.widget-state+json"
KERNEL = "prunekit-test"
SMALL_BUDGET_S = 180  # the brief each notebook is written to: under 3 minutes on a 2-core CPU


def strip_outputs(path: Path) -> bool:
    """Remove outputs, execution counts and saved widget state from a notebook in place; True if it changed."""
    nb = nbformat.read(path, as_version=4)
    before = nbformat.writes(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.metadata.pop("widgets", None)
    after = nbformat.writes(nb)
    if after != before:
        path.write_text(after, encoding="utf-8")
    return after != before


def test_notebooks_exist_and_are_stripped():
    """Committed notebooks carry no outputs or execution counts (they are rebuilt by running them)."""
    names = [p.name for p in NOTEBOOKS]
    assert names == ["01_relaxations.ipynb", "02_train_prune_collapse.ipynb",
                     "03_mask_confidence_and_diversity.ipynb", "04_compare_methods.ipynb"]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        dirty = [i for i, c in enumerate(nb.cells)
                 if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
        assert not dirty, (
            f"{path.name}: cells {dirty} have outputs; run python tests/test_notebooks.py --strip {path}")
        assert "widgets" not in nb.metadata, f"{path.name}: saved widget state committed"
        first = next(c for c in nb.cells if c.cell_type == "code")
        assert "PRUNEKIT_NB_SMALL" in first.source, f"{path.name}: the first code cell must read the budget switch"


def _kernel_manager(tmp_path: Path, env: dict[str, str]):
    """A KernelManager for this interpreter, found through a kernelspec folder of our own."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec_dir = tmp_path / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "prunekit (tests)",
        "language": "python",
        "env": env,
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    ksm = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
    return KernelManager(kernel_name=KERNEL, kernel_spec_manager=ksm)


def _widget_models(nb) -> dict[str, dict]:
    return nb.metadata.get("widgets", {}).get(WIDGET_MIME, {}).get("state", {})


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path: Path, tmp_path: Path):
    nb = nbformat.read(path, as_version=4)
    env = {
        "PRUNEKIT_NB_SMALL": "1",
        "PRUNEKIT_HOME": str(tmp_path / "runs"),
        # one core each for the kernel and its background runs: the machine is shared
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
    }
    km = _kernel_manager(tmp_path, env)
    client = nbclient.NotebookClient(
        nb, km=km, kernel_name=KERNEL, timeout=SMALL_BUDGET_S, startup_timeout=120, allow_errors=False,
        store_widget_state=True, resources={"metadata": {"path": str(tmp_path)}},
    )
    t0 = time.monotonic()
    try:
        client.execute()  # raises CellExecutionError naming the cell on the first error
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, ARTIFACTS / path.name)
    seconds = time.monotonic() - t0
    assert seconds < SMALL_BUDGET_S, f"{path.name} took {seconds:.0f} s in small-budget mode"

    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    # library code must not print: the only stream output allowed is a notebook's own print()
    stderr = [o.text for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "stream" and o.name == "stderr"]
    assert not stderr, f"{path.name} wrote to stderr: {stderr[:3]}"

    # widget state is saved, and every widget view in the outputs refers to a saved model
    models = _widget_models(nb)
    assert models, f"{path.name}: no widget state saved in metadata.widgets"
    views = [o.data["application/vnd.jupyter.widget-view+json"]["model_id"]
             for c in nb.cells if c.cell_type == "code" for o in c.outputs
             if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert views, f"{path.name} displays no widget"
    missing = [m for m in views if m not in models]
    assert not missing, f"{path.name}: widget views without saved state: {missing}"
    # the figures inside the widgets are part of that state (Output widgets holding plotly outputs)
    plots = [m for m in models.values() if m["model_name"] == "OutputModel"
             and any("application/vnd.plotly.v1+json" in o.get("data", {}) for o in m["state"].get("outputs", []))]
    assert plots, f"{path.name}: no figure saved inside a widget"


def test_strip_outputs(tmp_path: Path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")])
    nb.cells[0].outputs = [nbformat.v4.new_output("execute_result", {"text/plain": "2"}, execution_count=1)]
    nb.cells[0].execution_count = 1
    nb.metadata["widgets"] = {WIDGET_MIME: {"state": {}}}
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, path)
    assert strip_outputs(path) is True
    clean = nbformat.read(path, as_version=4)
    assert clean.cells[0].outputs == [] and clean.cells[0].execution_count is None and "widgets" not in clean.metadata
    assert strip_outputs(path) is False


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "--strip":
        sys.exit("usage: python tests/test_notebooks.py --strip NOTEBOOK.ipynb ...")
    for arg in sys.argv[2:]:
        print(("stripped " if strip_outputs(Path(arg)) else "clean    ") + arg)
