"""One training round: assemble the data from the database, train the twin ensemble, evaluate, publish.

Each ensemble member trains in its own work folder named by the data and config it
trains on (``<checkpoints>/<dataset hash>-<config hash>-m<member>``), checkpointed
every epoch: a run killed mid-way has published nothing, and the next run with the
same data picks up at the last finished epoch. Only a finished member is published
(files first, then the manifest entry), then recorded in ``Twin``. Member 0 gets the
alias ``mei-twin-<animal>``. MEIs are generated with the ensemble; with three or more
members the last one is held out of generation and scores the candidates.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from labpipe.mei.dataset import TrainingData, training_data
from labpipe.mei.schema import tables
from labpipe.mei.twin import TrainingResult, TwinConfig, per_unit_correlation, predict, save_twin, train_twin
from labpipe.registry import Registry

MODEL_TYPE = "mei-twin"


def twin_alias(animal_id: str) -> str:
    return f"mei-twin-{animal_id}"


@dataclass
class MemberResult:
    model_id: str
    member: int
    heldout_corr: list[float]  # per unit, single-trial responses of held-out stimuli
    history: list[dict]
    resumed_from_epoch: int
    published: bool


@dataclass
class RoundResult:
    animal_id: str
    dataset_hash: str
    n_trials: int
    n_heldout: int
    unit_ids: list[str]
    scans: list[dict]
    members: list[MemberResult] = field(default_factory=list)
    norm: float = 0.0

    @property
    def model_ids(self) -> list[str]:
        return [m.model_id for m in self.members]


def split_ensemble(model_ids: list[str]) -> tuple[list[str], list[str]]:
    """(generators, scorers): with three or more members the last scores as a held-out model;
    with fewer, the whole ensemble generates and scores."""
    if len(model_ids) >= 3:
        return model_ids[:-1], model_ids[-1:]
    return list(model_ids), list(model_ids)


def config_hash(config: TwinConfig) -> str:
    return hashlib.sha256(json.dumps(config.as_dict(), sort_keys=True).encode()).hexdigest()[:8]


def train_member(
    data: TrainingData,
    config: TwinConfig,
    member: int,
    checkpoints: Path,
    *,
    progress: Callable[[int, int], None] | None = None,
    stop_after_epoch: int | None = None,
) -> tuple[Path, TrainingResult, np.ndarray]:
    """Train one member on the non-held-out trials; returns (model folder, facts, held-out corr per unit)."""
    member_config = replace(config, seed=config.seed + member)
    workdir = Path(checkpoints) / f"{data.dataset_hash}-{config_hash(member_config)}-m{member}"
    train = ~data.heldout
    model, result = train_twin(
        data.images[train],
        data.responses[train],
        member_config,
        workdir,
        progress=progress,
        stop_after_epoch=stop_after_epoch,
    )
    heldout = data.heldout
    corr = per_unit_correlation(predict(model, data.images[heldout]), data.responses[heldout])
    folder = save_twin(
        model,
        workdir / "model",
        unit_ids=data.unit_ids,
        animal_id=data.animal_id,
        config=member_config,
        extra={"dataset_hash": data.dataset_hash, "member": member, "norm": data.norm},
    )
    return folder, result, corr


def publish_member(
    db,
    registry: Registry,
    data: TrainingData,
    config: TwinConfig,
    member: int,
    folder: Path,
    result: TrainingResult,
    corr: np.ndarray,
    *,
    ensemble_id: str,
) -> MemberResult:
    """Publish a finished member (idempotent: the same weights give the same id) and record it."""
    member_config = replace(config, seed=config.seed + member)
    entry = registry.publish(
        folder,
        model_type=MODEL_TYPE,
        config={
            **member_config.as_dict(),
            "animal_id": data.animal_id,
            "dataset_hash": data.dataset_hash,
            "member": member,
        },
        training={
            "dataset_hash": data.dataset_hash,
            "epochs": result.epochs,
            "final_loss": result.final_loss,
            "training_duration_sec": round(result.duration_sec, 1),
        },
        checkpoint="twin.pt",
        alias=twin_alias(data.animal_id) if member == 0 else None,
        tags=[MODEL_TYPE, data.animal_id, f"ensemble-{ensemble_id}"],
        notes=f"member {member} of ensemble {ensemble_id}; {len(data.scans)} scans, {len(data.images)} trials",
        metrics={"heldout_corr_median": float(np.median(corr)), "heldout_corr": [round(float(c), 4) for c in corr]},
    )
    _record_twin(db, registry.room, data, entry.id, member, ensemble_id, result, corr)
    return MemberResult(entry.id, member, [float(c) for c in corr], result.history, result.resumed_from_epoch, True)


def _record_twin(db, room, data: TrainingData, model_id, member, ensemble_id, result, corr) -> None:
    t = tables(db)
    key = {"model_id": model_id}
    if t.Twin & key:
        return
    with t.schema.connection.transaction:
        t.Twin.insert1(
            dict(
                key,
                animal_id=data.animal_id,
                room=room,
                trained=dt.datetime.now(),
                n_trials=len(data.images),
                n_units=len(data.unit_ids),
                dataset_hash=data.dataset_hash,
                epochs=result.epochs,
                final_loss=result.final_loss,
                heldout_corr=float(np.median(corr)),
                member=member,
                ensemble=ensemble_id,
            )
        )
        t.Twin.TrainedOn.insert([dict(key, **scan) for scan in data.scans])
        t.Twin.UnitFit.insert(
            [
                dict(key, animal_id=data.animal_id, unit_id=u, heldout_corr=float(c))
                for u, c in zip(data.unit_ids, corr, strict=True)
            ]
        )


def train_round(
    db,
    registry: Registry,
    animal_id: str,
    checkpoints: Path,
    *,
    config: TwinConfig | None = None,
    ensemble: int = 2,
    progress: Callable[[int, int], None] | None = None,
) -> RoundResult:
    """Train, evaluate and publish an ensemble of twins on everything linked for ``animal_id``."""
    config = config or TwinConfig()
    data = training_data(db, animal_id)
    ensemble_id = f"{data.dataset_hash[:8]}-{config_hash(config)}"
    out = RoundResult(
        animal_id,
        data.dataset_hash,
        len(data.images),
        int(data.heldout.sum()),
        data.unit_ids,
        data.scans,
        norm=data.norm,
    )
    total = ensemble * config.epochs
    for member in range(ensemble):
        done = member * config.epochs

        def member_progress(epoch: int, _total: int, done=done) -> None:
            if progress:
                progress(done + epoch, total)

        folder, result, corr = train_member(data, config, member, checkpoints, progress=member_progress)
        out.members.append(
            publish_member(db, registry, data, config, member, folder, result, corr, ensemble_id=ensemble_id)
        )
    return out
