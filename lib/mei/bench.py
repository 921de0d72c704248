"""A simulated two-photon rig (bench2p1 by default) recording simulated neurons' responses to stimulus sets.

A recording is an ordinary ADAMACS session folder dropped into the setup's staging
folder (``<staging>/<setup>/<username>/<INITIALS>_<ANIMAL>_<DATE>_sess<ID>/scan<ID>/``),
as a rig's acquisition PC would; ingest consolidates it into the share. Besides the
usual ``metadata.json``, the scan carries:

- ``stimuli.json``: the stimuli manifest of the scan (``STIMULI_FILE``): stimulus set
  ids, the stimulus id shown on every trial in order, the recorded unit ids, and the
  name of the response file;
- ``responses.npy``: (trials, units) float32, one response per trial and unit.

On a real rig these two come from the stimulus PC's log and from the imaging
pipeline's per-trial responses of matched ROIs; here the simulated neurons respond.
"""

from __future__ import annotations

import datetime as dt
import json
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from labpipe.files import atomic_path
from labpipe.ingest.naming import session_folder_name
from labpipe.mei.neurons import SimulatedPopulation
from labpipe.mei.stimuli import StimulusSetFiles

STIMULI_FILE = "stimuli.json"
RESPONSES_FILE = "responses.npy"
FORMAT = "labpipe-stimuli/1"
ID_ALPHABET = np.array(list(string.ascii_uppercase + string.digits))


@dataclass
class Recording:
    setup: str
    session_folder: str  # <username>/<session folder>, relative to the share (or the setup's staging folder)
    scan_folder: str  # <session folder>/<scan folder>
    n_trials: int
    stimulus_ids: list[str]


def presentation_order(
    sets: list[tuple[StimulusSetFiles, int, int | None]], rng: np.random.Generator
) -> list[tuple[str, np.ndarray]]:
    """Trials for ``(set, repeats, max_stimuli)`` entries, shuffled together: (stimulus id, image) per trial."""
    trials = []
    for files, repeats, limit in sets:
        chosen = np.arange(len(files.ids))
        if limit is not None and limit < len(chosen):
            chosen = np.sort(rng.choice(chosen, limit, replace=False))
        trials += [(files.ids[i], files.images[i]) for i in chosen for _ in range(repeats)]
    order = rng.permutation(len(trials))
    return [trials[i] for i in order]


def record_session(
    staging: Path,
    population: SimulatedPopulation,
    sets: list[tuple[StimulusSetFiles, int, int | None]],
    *,
    setup: str = "bench2p1",
    username: str = "alice",
    initials: str = "AB",
    date: dt.date | None = None,
    seed: int = 0,
    units: list[str] | None = None,
) -> Recording:
    """Present the stimuli to the simulated neurons and drop the session folder into ``staging/<setup>``.

    ``sets`` lists (stimulus set, repeats per stimulus, at most this many stimuli of it).
    ``units`` limits the recorded units (a rig rarely finds every neuron again).
    """
    rng = np.random.default_rng(seed)
    session_id = "".join(rng.choice(ID_ALPHABET, 8))
    folder = session_folder_name(initials, population.animal_id, date or dt.date.today(), session_id)
    trials = presentation_order(sets, rng)
    ids = [sid for sid, _ in trials]
    images = np.stack([im for _, im in trials])
    recorded = units or population.unit_ids
    columns = [population.unit_ids.index(u) for u in recorded]
    responses = population.respond(images, seed=seed)[:, columns]
    scan_dir = Path(staging) / setup / username / folder / f"scan{session_id}"
    manifest = {
        "format": FORMAT,
        "setup": setup,
        "animal_id": population.animal_id,
        "stimulus_sets": sorted({files.set_id for files, _, _ in sets}),
        "trials": ids,
        "units": recorded,
        "responses": RESPONSES_FILE,
    }
    with atomic_path(scan_dir) as tmp:
        tmp.mkdir()
        np.save(tmp / RESPONSES_FILE, responses.astype(np.float32))
        (tmp / STIMULI_FILE).write_text(json.dumps(manifest, indent=1))
        (tmp / "metadata.json").write_text(json.dumps({"setup": setup, "objective": "16x", "fps": 30.0}))
    return Recording(setup, f"{username}/{folder}", f"{folder}/scan{session_id}", len(ids), ids)
