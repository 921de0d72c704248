"""notebooks/ingest.ipynb and notebooks/analysis.ipynb executed (nbclient, a real kernel) on a small simulated session.

The notebooks read the lab's configuration as a user's would: ``LABPIPE_OFFLINE=1`` (no Prefect server), the
database from ``LABPIPE_DATABASE_URL``/``LABPIPE_SCHEMA_PREFIX`` and the share and blob store under
``$LABPIPE_HOME``. The ingest notebook finds the user's session and ingests it; the populations then run
as their workers would (small CPU settings); the analysis notebook plots a cell's activity aligned to trials.
"""

import uuid
from pathlib import Path

import nbformat
import pytest
from labpipe.calcium.populate import run_population
from labpipe.calcium.schema import CalciumContext
from labpipe.calcium.settings import SpikeSettings, Suite2pSettings
from labpipe.calcium.simulate import RecordingSpec
from labpipe.db.connect import LabDatabase
from labpipe.ingest.simulate_science import simulate_science_share
from labpipe.layout import Layout
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
SPEC = RecordingSpec(frames=1500, height=64, width=64, cells=10, photons=8, rate_hz=0.6, seed=3)


def _execute(name: str, workdir: Path) -> nbformat.NotebookNode:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    resources = {"metadata": {"path": str(workdir)}}
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources=resources).execute()
    nbformat.write(notebook, workdir / f"executed-{name}")  # to look at (the test's tmp folder)
    return notebook


def _text(notebook) -> str:
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            parts += [str(v) for k, v in output.get("data", {}).items() if k.startswith("text/")]
    return "\n".join(parts)


def _images(notebook) -> int:
    return sum("image/png" in o.get("data", {}) for cell in notebook.cells for o in cell.get("outputs", []))


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_ingest_then_analysis_notebooks_run_on_a_simulated_session(embedded_target, tmp_path, monkeypatch):
    home = tmp_path / "home"
    roots = Layout.default(home).ensure()
    prefix = f"t{uuid.uuid4().hex[:10]}"
    db = LabDatabase(embedded_target, roots.blobs, prefix=prefix)
    monkeypatch.setenv("LABPIPE_HOME", str(home))
    monkeypatch.setenv("LABPIPE_OFFLINE", "1")
    monkeypatch.setenv("LABPIPE_DATABASE_URL", embedded_target.url)
    monkeypatch.setenv("LABPIPE_SCHEMA_PREFIX", prefix)
    monkeypatch.setenv("LABPIPE_NOTEBOOK_USER", "alice")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")  # the figures as outputs
    try:
        share = simulate_science_share(roots.share, 1, spec=SPEC, video=False)
        ingest = _execute("ingest.ipynb", tmp_path)
        text = _text(ingest)
        assert "1 sessions of alice" in text and "1 sessions inserted" in text, text[-3000:]
        assert "Processing" in text and "0 failed or stuck jobs" in text

        context = CalciumContext(roots.share, roots.scratch, Suite2pSettings.small(), spikes=SpikeSettings.small())
        for population in ("imaging", "spikes", "behavior"):
            result = run_population(db, population, context)
            assert result.errors == [], result.errors

        analysis = _execute("analysis.ipynb", tmp_path)
        text = _text(analysis)
        session_id = share.scans[0].folder.rsplit("scan", 1)[1]
        assert session_id in text and "methods ['cascade', 'oasis']" in text, text[-3000:]
        assert f"{len(share.scans[0].behavior.trial_starts_harp)} trials" in text
        assert "no pose estimation for this scan" in text
        assert _images(analysis) >= 3  # the stack, the traces with trials, the trial-aligned averages
    finally:
        db.drop_all()
