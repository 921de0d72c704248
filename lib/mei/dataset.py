"""Training data for a twin, assembled from the lab database: every linked scan of an animal.

Each trial becomes one (image, responses) row; units a scan did not record are NaN
(masked out of the loss). The held-out split is by stimulus, not by trial (a
stimulus id hashing into the last tenth is held out with all its repeats), so no
image is both trained on and evaluated, and the split stays the same as scans are
added: a new round's held-out set contains the old one's.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from labpipe.errors import InvalidInput
from labpipe.files import atomic_path
from labpipe.mei.schema import as_array, tables

HELDOUT_BUCKETS = 10


@dataclass
class TrainingData:
    animal_id: str
    unit_ids: list[str]
    images: np.ndarray  # (trials, size, size)
    responses: np.ndarray  # (trials, units), NaN where not recorded
    stimulus_ids: np.ndarray  # (trials,)
    scans: list[dict]  # scan keys
    dataset_hash: str
    norm: float  # median L2 norm of the images (the MEI budget)

    @property
    def heldout(self) -> np.ndarray:
        """Boolean mask of held-out trials."""
        return np.array([is_heldout(s) for s in self.stimulus_ids], dtype=bool)

    def save(self, path: Path) -> Path:
        """Write to ``path`` (.npz) atomically, so tasks pass a path instead of arrays."""
        meta = {
            "animal_id": self.animal_id,
            "unit_ids": self.unit_ids,
            "scans": self.scans,
            "dataset_hash": self.dataset_hash,
            "norm": self.norm,
        }
        with atomic_path(Path(path)) as tmp, open(tmp, "wb") as handle:
            np.savez(
                handle,
                images=self.images,
                responses=self.responses,
                stimulus_ids=self.stimulus_ids,
                meta=np.array(json.dumps(meta)),
            )
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> TrainingData:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            return cls(images=data["images"], responses=data["responses"], stimulus_ids=data["stimulus_ids"], **meta)


def is_heldout(stimulus_id: str) -> bool:
    return int(hashlib.sha256(stimulus_id.encode()).hexdigest()[:8], 16) % HELDOUT_BUCKETS == 0


def training_data(db, animal_id: str, *, unit_ids: list[str] | None = None) -> TrainingData:
    """All linked trials of ``animal_id``; raises ``InvalidInput`` if there are none."""
    t = tables(db)
    scans = (t.ScanStimuli * t.ingest.Session.proj("animal_id") & {"animal_id": animal_id}).to_dicts(
        order_by=["session_id", "scan_id"]
    )
    if not scans:
        raise InvalidInput(animal_id, "no linked scans of this animal", "ingest recordings and run the link step")
    recorded = (t.ScanStimuli.Recorded & {"animal_id": animal_id}).to_dicts()
    units = unit_ids or sorted({r["unit_id"] for r in recorded})
    column = {u: i for i, u in enumerate(units)}
    stimuli = {r["stimulus_id"]: r for r in t.Stimulus.to_dicts()}
    set_images: dict[str, np.ndarray] = {}
    images, responses, ids, keys = [], [], [], []
    digest = hashlib.sha256(animal_id.encode())
    for scan in scans:
        key = {"session_id": scan["session_id"], "scan_id": scan["scan_id"]}
        keys.append(key)
        trial_ids = [str(s) for s in as_array(scan["trial_stimuli"])]
        scan_responses = as_array(scan["responses"]).astype(np.float32)
        block = np.full((len(trial_ids), len(units)), np.nan, dtype=np.float32)
        for r in (t.ScanStimuli.Recorded & key).to_dicts():
            if r["unit_id"] in column:
                block[:, column[r["unit_id"]]] = scan_responses[:, r["response_column"]]
        for sid in trial_ids:
            info = stimuli[sid]
            if info["set_id"] not in set_images:
                set_images[info["set_id"]] = as_array((t.StimulusSet & {"set_id": info["set_id"]}).fetch1("images"))
            images.append(set_images[info["set_id"]][info["set_index"]])
        responses.append(block)
        ids += trial_ids
        digest.update(repr(sorted(key.items())).encode())
        digest.update(np.ascontiguousarray(scan_responses).tobytes())
        digest.update(",".join(trial_ids).encode())
    images_array = np.stack(images).astype(np.float32)
    digest.update(",".join(units).encode())
    return TrainingData(
        animal_id=animal_id,
        unit_ids=units,
        images=images_array,
        responses=np.concatenate(responses),
        stimulus_ids=np.array(ids),
        scans=keys,
        dataset_hash=digest.hexdigest()[:16],
        norm=float(np.median(np.linalg.norm(images_array.reshape(len(images_array), -1), axis=1))),
    )
