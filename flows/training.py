"""Training lifecycle flows (gpu pool): the model registry and the MEI closed loop.

- ``link-stimuli``: after ingest, link new scans to the stimuli (and MEIs) they showed.
- ``train-twin``: train the twin ensemble of an animal on every linked scan, evaluate on
  held-out stimuli, publish every member to the registry (member 0 as ``mei-twin-<animal>``).
- ``mei-candidates``: MEIs by gradient ascent (Dask over units, several seeds each), scored
  by the held-out members, best per unit exported as a stimulus set to the rig.
- ``mei-loop``: one turn: link -> train -> candidates -> export.

Deployments in deployments/prefect.yaml (``# --- training ---``). Runs are resumable: a
killed training run publishes nothing and the next run resumes from its checkpoint.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Iterator
from pathlib import Path

from labpipe.blocks import dask_settings, lab_database, layout
from labpipe.blocks.registry import model_registry, model_store
from labpipe.flows.common import Progress, gpu_slot, logger, markdown_table, png_markdown, publish_markdown
from labpipe.mei.stimuli import stimulus_folder
from labpipe.registry import Registry
from prefect import flow, task


@contextlib.contextmanager
def _busy_in_room(registry: Registry) -> Iterator[None]:
    """Mark this gpu-pool worker busy in the room while the body runs (available after), so clients can find it.

    Discovery is advisory: a record that cannot be written is a warning, never a failed run.
    """
    from labpipe.registry import host_metadata

    def record(status: str) -> None:
        try:
            registry.register_worker(host_metadata(status=status), pool="gpu", tags=["mei"])
        except Exception as exc:
            logger().warning("worker record not written: %s", exc)

    record("busy")
    try:
        yield
    finally:
        record("available")


# --- link --------------------------------------------------------------------------------------


@task(name="link-scans", task_run_name="link-scans", retries=2, retry_delay_seconds=10)
def link_scans_task(db_block: str | None, layout_block: str | None) -> dict:
    from labpipe.mei.link import link_scans

    report = link_scans(
        lab_database(db_block, layout_block), layout(layout_block).share, progress=Progress("scans linked")
    )
    for failure in report.failed:
        logger().warning("scan not linked: %s: %s", failure["scan"], failure["reason"])
    return {"linked": report.linked, "failed": report.failed, "already": report.already}


@flow(name="link-stimuli", flow_run_name="link-stimuli", log_prints=True)
def link_stimuli(db_block: str | None = "default", layout_block: str | None = "default") -> dict:
    """Link ingested scans to the stimuli they showed (run after ingest; idempotent).

    Args:
        db_block: Name of the labpipe lab database block (the DataJoint server).
        layout_block: Name of the labpipe storage layout block (where data lives): "default" unless a lab has several.
    """
    report = link_scans_task(db_block, layout_block)
    publish_markdown(
        f"# Stimulus links\n{len(report['linked'])} scans linked now, {report['already']} before.\n\n"
        + markdown_table(report["linked"], ["folder", "trials", "stimuli", "mei_stimuli", "units"])
        + f"\n## not linked ({len(report['failed'])})\n"
        + markdown_table(report["failed"], ["scan", "reason"]),
        key="link-stimuli",
        description="scans linked to their stimuli",
    )
    return {"linked": len(report["linked"]), "failed": len(report["failed"])}


# --- train -------------------------------------------------------------------------------------


@task(name="assemble-training-data", task_run_name="assemble-{animal_id}")
def assemble_task(animal_id: str, db_block, layout_block) -> dict:
    from labpipe.mei.dataset import training_data

    data = training_data(lab_database(db_block, layout_block), animal_id)
    path = layout(layout_block).scratch / "mei" / f"{animal_id}-{data.dataset_hash}.npz"
    data.save(path)
    return {
        "path": str(path),
        "dataset_hash": data.dataset_hash,
        "trials": len(data.images),
        "heldout": int(data.heldout.sum()),
        "scans": len(data.scans),
        "units": len(data.unit_ids),
    }


@task(name="train-member", task_run_name="train-{animal_id}-m{member}")
def train_member_task(animal_id: str, data_path: str, config: dict, member: int, layout_block) -> dict:
    """Train one ensemble member (resumes from its checkpoint); holds one gpu slot."""
    from labpipe.mei.dataset import TrainingData
    from labpipe.mei.training import train_member
    from labpipe.mei.twin import TwinConfig

    data = TrainingData.load(Path(data_path))
    checkpoints = layout(layout_block).models / "checkpoints" / "mei"
    with gpu_slot():
        folder, result, corr = train_member(
            data,
            TwinConfig.from_dict(config),
            member,
            checkpoints,
            progress=Progress(f"member {member}: epochs", key=f"train-m{member}"),
        )
    if result.resumed_from_epoch:
        logger().info("member %d resumed from epoch %d", member, result.resumed_from_epoch)
    return {"folder": str(folder), "result": result.__dict__, "corr": [float(c) for c in corr]}


@task(name="publish-member", task_run_name="publish-{animal_id}-m{member}", retries=3, retry_delay_seconds=5)
def publish_member_task(
    animal_id: str,
    data_path: str,
    config: dict,
    member: int,
    trained: dict,
    ensemble_id: str,
    store_block,
    room,
    db_block,
    layout_block,
) -> dict:
    import numpy as np
    from labpipe.mei.dataset import TrainingData
    from labpipe.mei.training import publish_member
    from labpipe.mei.twin import TrainingResult, TwinConfig

    registry = model_registry(store_block, room=room, layout_name=layout_block)
    out = publish_member(
        lab_database(db_block, layout_block),
        registry,
        TrainingData.load(Path(data_path)),
        TwinConfig.from_dict(config),
        member,
        Path(trained["folder"]),
        TrainingResult(**trained["result"]),
        np.array(trained["corr"]),
        ensemble_id=ensemble_id,
    )
    return out.__dict__


def _training_summary(animal_id: str, data: dict, members: list[dict], truth: list[float] | None) -> str:
    import numpy as np
    from labpipe.mei.plots import heldout_bars, training_curves

    units = [f"u{i:03d}" for i in range(data["units"])]
    curves = training_curves({f"m{m['member']} {m['model_id']}": m["history"] for m in members})
    bars = heldout_bars(units, {f"m{m['member']}": m["heldout_corr"] for m in members}, truth)
    rows = [
        {
            "member": m["member"],
            "model": m["model_id"],
            "held-out r (median)": f"{np.median(m['heldout_corr']):.3f}",
            "min": f"{np.min(m['heldout_corr']):.3f}",
            "resumed from epoch": m["resumed_from_epoch"],
        }
        for m in members
    ]
    lines = [
        f"# Twin ensemble of {animal_id}",
        f"{data['trials']} trials from {data['scans']} scans ({data['heldout']} held out by stimulus), "
        f"{data['units']} units, dataset `{data['dataset_hash']}`.",
        markdown_table(rows),
        png_markdown(curves, "training curves"),
        png_markdown(bars, "held-out correlation per unit"),
    ]
    if truth is not None:
        lines.insert(
            2,
            f"Against the simulated neurons' noise-free rates: median r {np.median(truth):.3f}, "
            f"min {np.min(truth):.3f}.",
        )
    return "\n\n".join(lines)


def _truth_of_twin(animal_id: str, folder: str, n_units: int, simulated_seed: int | None) -> list[float] | None:
    if simulated_seed is None:
        return None
    from labpipe.mei.neurons import simulate_population
    from labpipe.mei.quality import twin_truth_correlation
    from labpipe.mei.twin import load_twin, predict

    twin = load_twin(Path(folder))
    population = simulate_population(animal_id, n_units, seed=simulated_seed)
    return [float(c) for c in twin_truth_correlation(population, lambda x: predict(twin.model, x))]


@flow(name="train-twin", flow_run_name="train-twin-{animal_id}", log_prints=True)
def train_twin(
    animal_id: str,
    epochs: int = 10,
    ensemble: int = 2,
    link_first: bool = True,
    room: str | None = None,
    simulated_seed: int | None = None,
    store_block: str | None = "default",
    layout_block: str | None = "default",
    db_block: str | None = "default",
) -> dict:
    """Train, evaluate and publish the twin ensemble of an animal on every linked scan; resumes a killed run.

    Args:
        animal_id: The animal (as in the subject tables, e.g. ANM-3001) whose scans train the twin.
        epochs: Training epochs per member.
        ensemble: Members of the ensemble (member 0 becomes alias mei-twin-ANIMAL, the others score MEIs).
        link_first: Link new scans to their stimuli before training.
        room: Registry room; empty: the model store block's.
        simulated_seed: Seed of a simulated population, to report recovery of its true neurons (demos, tests).
        store_block: Name of the labpipe model store block (the room's model registry).
        layout_block: Name of the labpipe storage layout block (where data lives): "default" unless a lab has several.
        db_block: Name of the labpipe lab database block (the DataJoint server).
    """
    from dataclasses import replace

    from labpipe.mei.training import config_hash
    from labpipe.mei.twin import TwinConfig

    with _busy_in_room(model_registry(store_block, room=room, layout_name=layout_block)):
        if link_first:
            link_scans_task(db_block, layout_block)
        data = assemble_task(animal_id, db_block, layout_block)
        config = replace(TwinConfig(), epochs=epochs)
        ensemble_id = f"{data['dataset_hash'][:8]}-{config_hash(config)}"
        members, truth = [], None
        for member in range(ensemble):
            trained = train_member_task(animal_id, data["path"], config.as_dict(), member, layout_block)
            members.append(
                publish_member_task(
                    animal_id,
                    data["path"],
                    config.as_dict(),
                    member,
                    trained,
                    ensemble_id,
                    store_block,
                    room,
                    db_block,
                    layout_block,
                )
            )
            if member == 0:
                truth = _truth_of_twin(animal_id, trained["folder"], data["units"], simulated_seed)
        publish_markdown(
            _training_summary(animal_id, data, members, truth),
            key="twin-training",
            description=f"twin ensemble of {animal_id}",
        )
        return {
            "animal_id": animal_id,
            "dataset_hash": data["dataset_hash"],
            "trials": data["trials"],
            "models": [m["model_id"] for m in members],
            "heldout_corr_median": [statistics.median(m["heldout_corr"]) for m in members],
            "truth_corr": truth,
        }


# --- MEIs --------------------------------------------------------------------------------------


@task(name="mei-candidates", task_run_name="mei-candidates-{animal_id}")
def candidates_task(
    animal_id: str,
    generator_ids: list[str],
    scorer_ids: list[str],
    unit_ids: list[str],
    norm: float,
    mei_config: dict,
    seeds: list[int],
    store_block,
    room,
    layout_block,
    use_dask: bool,
) -> str:
    """Candidates of every unit, one Dask task per unit; written to scratch, the path returned."""
    import numpy as np
    from labpipe.compute import dask_client
    from labpipe.files import atomic_path
    from labpipe.mei.loop import generate_all, mei_run_id

    roots = layout(layout_block)
    job = dict(
        store=model_store(store_block),
        layout=roots,
        room=room or model_store(store_block).room,
        generator_ids=generator_ids,
        scorer_ids=scorer_ids,
        norm=norm,
        mei_config=mei_config,
        seeds=seeds,
    )
    progress = Progress("units optimised")
    with gpu_slot():
        if use_dask:
            with dask_client(dask_settings()) as client:
                results = generate_all(unit_ids, job, client=client, progress=progress)
        else:
            results = generate_all(unit_ids, job, progress=progress)
    run = mei_run_id(generator_ids, scorer_ids, unit_ids, mei_config, seeds)
    path = roots.scratch / "mei" / f"candidates-{run}.npz"
    arrays = {
        f"{r['unit_id']}.{k}": np.asarray(r[k]) for r in results for k in ("images", "predicted", "scores", "seeds")
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    return str(path)


def _load_candidates(path: str, unit_ids: list[str]) -> list[dict]:
    import numpy as np

    with np.load(path) as data:
        return [
            {"unit_id": u, **{k: data[f"{u}.{k}"] for k in ("images", "predicted", "scores", "seeds")}}
            for u in unit_ids
        ]


@task(name="record-and-export", task_run_name="export-{animal_id}")
def record_and_export_task(
    animal_id: str,
    generator_ids: list[str],
    scorer_ids: list[str],
    unit_ids: list[str],
    mei_config: dict,
    seeds: list[int],
    candidates_path: str,
    setup: str,
    db_block,
    layout_block,
) -> dict:
    from labpipe.mei.loop import export_mei_set, record_mei_run

    db = lab_database(db_block, layout_block)
    results = _load_candidates(candidates_path, unit_ids)
    for r in results:
        r["seeds"] = [int(s) for s in r["seeds"]]
    run = record_mei_run(db, generator_ids, scorer_ids, mei_config, seeds, results)
    files = export_mei_set(db, run, stimulus_folder(layout(layout_block), setup))
    return {"mei_run": run, "set_id": files.set_id, "folder": str(files.folder), "stimuli": files.ids}


def _mei_summary(db, run: dict, animal_id: str, simulated_seed: int | None) -> tuple[str, dict | None]:
    import numpy as np
    from labpipe.mei.loop import chosen_meis
    from labpipe.mei.plots import mei_grid

    rows = chosen_meis(db, run["mei_run"])
    units = [r["unit_id"] for r in rows]
    images = np.stack([r["image"] for r in rows])
    truth, quality = None, None
    table = [
        {"unit": r["unit_id"], "seed": r["seed"], "predicted": f"{r['predicted']:.2f}", "score": f"{r['score']:.2f}"}
        for r in rows
    ]
    if simulated_seed is not None:
        from labpipe.mei.neurons import simulate_population
        from labpipe.mei.quality import mei_quality, summary

        population = simulate_population(animal_id, int(max(int(u[1:]) for u in units)) + 1, seed=simulated_seed)
        truth = np.stack([population.filters[population.unit_ids.index(u)] for u in units])
        per_unit = mei_quality(population, dict(zip(units, images, strict=True)))
        quality = summary(per_unit)
        for row, q in zip(table, per_unit, strict=True):
            row.update(
                {
                    "r(MEI, true filter)": f"{q.mei_filter_corr:.3f}",
                    "of optimum": f"{q.fraction_of_optimum:.0%}",
                    "vs best natural": f"{q.rate_at_mei / q.natural_max_rate:.1f}x",
                }
            )
    figure = mei_grid(units, images, truth)
    lines = [
        f"# MEIs of {animal_id}: run `{run['mei_run']}`",
        f"Exported as stimulus set `{run['set_id']}` to `{run['folder']}` ({len(run['stimuli'])} stimuli).",
        png_markdown(figure, "MEIs (top) and true filters (bottom)" if truth is not None else "MEIs"),
        markdown_table(table),
    ]
    if quality:
        lines.insert(
            2,
            "Against the simulated neurons: "
            + ", ".join(f"{k} {v:.3f}" for k, v in quality.items() if isinstance(v, float)),
        )
    return "\n\n".join(lines), quality


@flow(name="mei-candidates", flow_run_name="mei-candidates-{animal_id}", log_prints=True)
def mei_candidates(
    animal_id: str,
    model: str | None = None,
    scorers: list[str] | None = None,
    units: list[str] | None = None,
    seeds: int = 4,
    steps: int = 100,
    setup: str = "bench2p1",
    use_dask: bool = True,
    simulated_seed: int | None = None,
    room: str | None = None,
    store_block: str | None = "default",
    layout_block: str | None = "default",
    db_block: str | None = "default",
) -> dict:
    """Most exciting inputs by gradient ascent on the twin, scored by held-out members, best per unit to the rig.

    Args:
        animal_id: The animal whose twin generates the MEIs.
        model: Twin model id or alias; empty: mei-twin-ANIMAL.
        scorers: Model ids that score the candidates; empty: the ensemble's held-out members.
        units: Unit ids to optimise; empty: every unit the twin fits.
        seeds: Random starts per unit.
        steps: Gradient-ascent steps per start.
        setup: The rig whose stimulus folder receives the exported set.
        use_dask: Fan out over units on the Dask cluster.
        simulated_seed: Seed of a simulated population, to report how well MEIs match its true preferences.
        room: Registry room; empty: the model store block's.
        store_block: Name of the labpipe model store block (the room's model registry).
        layout_block: Name of the labpipe storage layout block (where data lives): "default" unless a lab has several.
        db_block: Name of the labpipe lab database block (the DataJoint server).
    """
    from dataclasses import replace

    from labpipe.mei.generate import MeiConfig
    from labpipe.mei.schema import tables
    from labpipe.mei.training import split_ensemble, twin_alias

    registry = model_registry(store_block, room=room, layout_name=layout_block)
    with _busy_in_room(registry):
        generator = registry.show(model or twin_alias(animal_id))
        db = lab_database(db_block, layout_block)
        t = tables(db)
        twin = (t.Twin & {"model_id": generator.id}).fetch1()
        members = [r["model_id"] for r in (t.Twin & {"ensemble": twin["ensemble"]}).to_dicts(order_by="member")]
        generators, default_scorers = split_ensemble(members)
        scorers = scorers or default_scorers
        unit_ids = units or sorted((t.Twin.UnitFit & {"model_id": generator.id}).to_arrays("unit_id"))
        config = replace(MeiConfig(), steps=steps, seeds=seeds).as_dict()
        seed_list = list(range(seeds))
        norm = _twin_norm(registry, generator.id)  # the contrast budget of the images the twin was trained on
        path = candidates_task(
            animal_id, generators, scorers, unit_ids, norm, config, seed_list, store_block, room, layout_block, use_dask
        )
        run = record_and_export_task(
            animal_id, generators, scorers, unit_ids, config, seed_list, path, setup, db_block, layout_block
        )
        markdown, quality = _mei_summary(db, run, animal_id, simulated_seed)
        publish_markdown(markdown, key="mei-candidates", description=f"MEIs of {animal_id}")
        return {
            **{k: v for k, v in run.items() if k != "stimuli"},
            "generators": generators,
            "scorers": scorers,
            "units": len(unit_ids),
            "quality": quality,
        }


def _twin_norm(registry: Registry, model_id: str) -> float:
    import json

    folder = registry.resolve(model_id).path
    return float(json.loads((folder / "twin.json").read_text())["norm"])


@flow(name="mei-loop", flow_run_name="mei-loop-{animal_id}", log_prints=True)
def mei_loop(
    animal_id: str,
    epochs: int = 10,
    ensemble: int = 2,
    seeds: int = 4,
    steps: int = 100,
    setup: str = "bench2p1",
    use_dask: bool = True,
    simulated_seed: int | None = None,
    room: str | None = None,
    store_block: str | None = "default",
    layout_block: str | None = "default",
    db_block: str | None = "default",
) -> dict:
    """One turn of the closed loop: link new recordings, train and publish the twins, export the next MEIs.

    Args:
        animal_id: The animal of the loop.
        epochs: Training epochs per twin member.
        ensemble: Members of the twin ensemble.
        seeds: Random starts per unit for the MEIs.
        steps: Gradient-ascent steps per start.
        setup: The rig whose stimulus folder receives the exported set.
        use_dask: Fan the MEIs out over units on the Dask cluster.
        simulated_seed: Seed of a simulated population (demos, tests).
        room: Registry room; empty: the model store block's.
        store_block: Name of the labpipe model store block (the room's model registry).
        layout_block: Name of the labpipe storage layout block (where data lives): "default" unless a lab has several.
        db_block: Name of the labpipe lab database block (the DataJoint server).
    """
    blocks = dict(store_block=store_block, layout_block=layout_block, db_block=db_block)
    linked = link_stimuli(db_block=db_block, layout_block=layout_block)
    trained = train_twin(
        animal_id,
        epochs=epochs,
        ensemble=ensemble,
        link_first=False,
        room=room,
        simulated_seed=simulated_seed,
        **blocks,
    )
    meis = mei_candidates(
        animal_id,
        model=trained["models"][0],
        seeds=seeds,
        steps=steps,
        setup=setup,
        use_dask=use_dask,
        simulated_seed=simulated_seed,
        room=room,
        **blocks,
    )
    return {"linked": linked, "trained": trained, "meis": meis}
