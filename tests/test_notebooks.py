"""The notebooks in ``notebooks/``: stored without outputs, and executed on small settings."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = [
    "01_noise_schedules.ipynb",
    "02_vlb_terms.ipynb",
    "03_importance_sampling.ipynb",
    "04_fast_sampling.ipynb",
]
# A line each notebook prints once its last computation is done.
FINAL_OUTPUT = {
    "01_noise_schedules.ipynb": "beta_tilde / beta reaches 0.5 at step",
    "02_vlb_terms.ipynb": "total bits/dim",
    "03_importance_sampling.ipynb": "variance ratio uniform / importance (replayed p_t): estimate x",
    "04_fast_sampling.ipynb": "FID (digits-classifier features",
}
# Seconds one cell may run before the test fails (the tiny training cells take ~10 s).
CELL_TIMEOUT = 300


def read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK_DIR / name, as_version=4)


def stream_text(nb: nbformat.NotebookNode) -> str:
    """Return everything the executed code cells wrote to stdout."""
    return "".join(
        output.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "stream" and output.name == "stdout"
    )


def test_notebook_set():
    assert sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_outputs_stripped(name):
    for cell in read(name).cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name}: a code cell has outputs"
            assert cell.execution_count is None, f"{name}: a code cell has an execution count"


@pytest.mark.parametrize("name", NAMES)
def test_parameters_cell_first(name):
    first = next(cell for cell in read(name).cells if cell.cell_type == "code")
    assert "parameters" in first.metadata.get("tags", [])
    assert 'os.environ.get("IDDPM_NB_FAST", "0") == "1"' in first.source


@pytest.mark.parametrize("name", NAMES)
def test_notebook_imports_package(name):
    sources = "\n".join(cell.source for cell in read(name).cells if cell.cell_type == "code")
    assert "from iddpm_pl import analysis" in sources


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    scratch = tmp_path / "scratch"
    work = tmp_path / "work"
    work.mkdir()
    for variable in (
        "JUPYTER_CONFIG_DIR",
        "JUPYTER_DATA_DIR",
        "JUPYTER_RUNTIME_DIR",
        "IPYTHONDIR",
        "MPLCONFIGDIR",
        "WANDB_DIR",
    ):
        (scratch / variable.lower()).mkdir(parents=True)
        monkeypatch.setenv(variable, str(scratch / variable.lower()))
    monkeypatch.setenv("IDDPM_NB_FAST", "1")
    monkeypatch.setenv("IDDPM_NB_CKPT", "")
    monkeypatch.setenv("IDDPM_NB_OUT", str(tmp_path / "runs"))
    monkeypatch.setenv("IDDPM_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    before = sorted(p.name for p in NOTEBOOK_DIR.iterdir())
    stored = (NOTEBOOK_DIR / name).read_bytes()

    nb = read(name)
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(work)}},
    )
    client.execute()

    assert FINAL_OUTPUT[name] in stream_text(nb)
    assert sorted(p.name for p in NOTEBOOK_DIR.iterdir()) == before
    assert (NOTEBOOK_DIR / name).read_bytes() == stored
