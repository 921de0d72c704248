"""Generate, score and export MEIs: the steps after training in one turn of the loop.

``unit_candidates`` is the unit of fan-out (one Dask task per unit): it resolves the
generating twins and the scorers through the registry on whichever worker runs it
(so it works on a cluster, each worker using its own verified cache), optimises
several seeds against the generating ensemble, and scores every candidate with the
scorers (held-out ensemble members when there are any, else the ensemble itself).
``record_mei_run`` stores the candidates and marks the best-scored one per unit;
``export_mei_set`` writes the chosen MEIs as a stimulus set into the rig's stimulus
folder and registers it, so recordings that show them link back to the MEIs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from labpipe.errors import InvalidInput
from labpipe.layout import Layout
from labpipe.mei.generate import MeiConfig, generate_meis
from labpipe.mei.schema import as_array, tables
from labpipe.mei.stimuli import StimulusSetFiles, register_stimulus_set, write_stimulus_set
from labpipe.mei.twin import LoadedTwin, load_twin, model_device
from labpipe.registry import ModelStoreSettings

_loaded: dict[str, LoadedTwin] = {}  # per worker process: twins already rebuilt, by model folder


def _twin(folder: Path) -> LoadedTwin:
    key = str(folder)
    if key not in _loaded:
        _loaded[key] = load_twin(folder)
    return _loaded[key]


def score_images(twin: LoadedTwin, unit_id: str, images: np.ndarray) -> np.ndarray:
    """A twin's predicted response of one unit to each image."""
    import torch

    unit = twin.unit_index(unit_id)
    with torch.no_grad():
        batch = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(model_device(twin.model))
        return twin.model(batch)[:, unit].cpu().numpy()


def unit_candidates(
    store: ModelStoreSettings,
    layout: Layout | None,
    room: str,
    generator_ids: list[str],
    scorer_ids: list[str],
    unit_id: str,
    norm: float,
    mei_config: dict,
    seeds: list[int],
) -> dict:
    """MEI candidates of one unit (one per seed) with the generator's prediction and the scorers' mean."""
    registry = store.open(layout, room=room)
    generators = [_twin(registry.resolve(g).path) for g in generator_ids]
    candidates = generate_meis(generators, unit_id, norm=norm, config=MeiConfig(**mei_config), seeds=seeds)
    images = np.stack([c.image for c in candidates])
    scores = np.mean([score_images(_twin(registry.resolve(s).path), unit_id, images) for s in scorer_ids], axis=0)
    return {
        "unit_id": unit_id,
        "seeds": list(seeds),
        "images": images,
        "predicted": [c.predicted for c in candidates],
        "scores": [float(s) for s in scores],
        "trajectories": [c.trajectory for c in candidates],
    }


def generate_all(
    unit_ids: list[str], job: dict, *, client=None, progress: Callable[[int, int], None] | None = None
) -> list[dict]:
    """``unit_candidates(**job, unit_id=u)`` for every unit: one Dask task per unit on ``client``, or here."""
    results = []
    if client is not None:
        from distributed import as_completed

        futures = [client.submit(unit_candidates, unit_id=u, pure=False, **job) for u in unit_ids]
        for done, future in enumerate(as_completed(futures), start=1):
            results.append(future.result())
            if progress:
                progress(done, len(unit_ids))
    else:
        for done, unit in enumerate(unit_ids, start=1):
            results.append(unit_candidates(unit_id=unit, **job))
            if progress:
                progress(done, len(unit_ids))
    order = {u: i for i, u in enumerate(unit_ids)}
    return sorted(results, key=lambda r: order[r["unit_id"]])


def mei_run_id(
    generator_ids: list[str], scorer_ids: list[str], unit_ids: list[str], config: dict, seeds: list[int]
) -> str:
    content = json.dumps([sorted(generator_ids), sorted(scorer_ids), unit_ids, config, seeds], sort_keys=True)
    return hashlib.sha256(content.encode()).hexdigest()[:16]


def record_mei_run(
    db, generator_ids: list[str], scorer_ids: list[str], config: dict, seeds: list[int], results: list[dict]
) -> str:
    """Store every candidate, the best-scored one per unit marked ``chosen``; returns the run id. Idempotent."""
    t = tables(db)
    twin = (t.Twin & {"model_id": generator_ids[0]}).fetch1()
    run = mei_run_id(generator_ids, scorer_ids, [r["unit_id"] for r in results], config, seeds)
    if t.MeiRun & {"mei_run": run}:
        return run
    rows = []
    for r in results:
        best = int(np.argmax(r["scores"]))
        for i, seed in enumerate(r["seeds"]):
            rows.append(
                dict(
                    mei_run=run,
                    animal_id=twin["animal_id"],
                    unit_id=r["unit_id"],
                    seed=seed,
                    image=np.asarray(r["images"][i], dtype=np.float32),
                    predicted=float(r["predicted"][i]),
                    score=float(r["scores"][i]),
                    chosen=i == best,
                )
            )
    with t.schema.connection.transaction:
        t.MeiRun.insert1(
            dict(
                mei_run=run,
                model_id=generator_ids[0],
                generators=",".join(generator_ids),
                scorers=",".join(scorer_ids),
                config=json.dumps(config, sort_keys=True),
                created=dt.datetime.now(),
            )
        )
        t.MeiRun.Candidate.insert(rows)
    return run


def chosen_meis(db, mei_run: str) -> list[dict]:
    """The chosen candidate of every unit of a run (image as an array), ordered by unit."""
    t = tables(db)
    rows = (t.MeiRun.Candidate & {"mei_run": mei_run} & "chosen").to_dicts(order_by="unit_id")
    if not rows:
        raise InvalidInput(mei_run, "no such MEI run, or it chose no candidates")
    for row in rows:
        row["image"] = as_array(row["image"]).astype(np.float32)
    return rows


def export_mei_set(db, mei_run: str, stimulus_folder: Path) -> StimulusSetFiles:
    """Write the run's chosen MEIs into ``stimulus_folder`` (the rig's) and register them. Idempotent."""
    t = tables(db)
    run = (t.MeiRun & {"mei_run": mei_run}).fetch1()
    rows = chosen_meis(db, mei_run)
    records = [
        {
            "kind": "mei",
            "animal_id": r["animal_id"],
            "unit_id": r["unit_id"],
            "seed": int(r["seed"]),
            "mei_run": mei_run,
            "model_id": run["model_id"],
            "predicted_response": round(float(r["predicted"]), 4),
            "score": round(float(r["score"]), 4),
        }
        for r in rows
    ]
    files = write_stimulus_set(
        Path(stimulus_folder),
        np.stack([r["image"] for r in rows]),
        kind="mei",
        records=records,
        model_id=run["model_id"],
        extra={"mei_run": mei_run, "generators": run["generators"].split(","), "scorers": run["scorers"].split(",")},
    )
    register_stimulus_set(db, files)
    t.MeiStimulus.insert(
        [
            dict(stimulus_id=sid, mei_run=mei_run, animal_id=r["animal_id"], unit_id=r["unit_id"], seed=r["seed"])
            for sid, r in zip(files.ids, rows, strict=True)
        ],
        skip_duplicates=True,
    )
    return files
