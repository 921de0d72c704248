"""Stimulus sets on disk: stable ids, the set manifest a rig reads, and registering a set in the database.

A set lives in ``<stimulus root>/<setup>/<set id>/``::

    manifest.json     set id, kind, norm, and per stimulus: id, index, sha256, png, and for MEIs
                      the unit, seed, generating model and scores
    stimuli.npy       (n, size, size) float32, mean 0, L2 norm ``norm``: what the rig presents
    png/<id>.png      8-bit previews (pixel = 128 + 127 * value / png_scale)

Stimulus ids are content hashes of the float32 pixels (``NAT-``/``MEI-`` + 12 hex), so
the same image always gets the same id, an export repeated after a crash writes the
same set, and a recording's stimulus list can be checked against the database.
The set id is a hash of its stimulus ids. The folder is written under a temporary
name and renamed, so a rig never sees half a set.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from labpipe.errors import ConflictError, InvalidInput
from labpipe.files import atomic_path, sha256_file

MANIFEST = "manifest.json"
ARRAY = "stimuli.npy"
PREFIX = {"natural": "NAT", "mei": "MEI"}


def stimulus_folder(roots, setup: str = "bench2p1") -> Path:
    """Where a rig reads its stimulus sets: ``<data>/stimuli/<setup>`` beside the share (``roots``: a Layout)."""
    return roots.share.parent / "stimuli" / setup


def stimulus_id(image: np.ndarray, kind: str) -> str:
    pixels = np.ascontiguousarray(image, dtype=np.float32)
    return f"{PREFIX[kind]}-{hashlib.sha256(pixels.tobytes()).hexdigest()[:12].upper()}"


def set_id_of(ids: list[str], kind: str) -> str:
    return f"{kind}-{hashlib.sha256(','.join(ids).encode()).hexdigest()[:10]}"


@dataclass
class StimulusSetFiles:
    """A stimulus set as read from (or written to) its folder."""

    set_id: str
    kind: str
    folder: Path
    ids: list[str]
    images: np.ndarray
    norm: float
    records: list[dict] = field(default_factory=list)  # per stimulus, as in the manifest
    model_id: str = ""


def write_stimulus_set(
    root: Path,
    images: np.ndarray,
    *,
    kind: str,
    records: list[dict] | None = None,
    model_id: str = "",
    extra: dict | None = None,
) -> StimulusSetFiles:
    """Write a set into ``root/<set id>/`` atomically; returns it. Idempotent: the same images, the same folder."""
    if kind not in PREFIX:
        raise InvalidInput(kind, f"stimulus kind: expected one of {sorted(PREFIX)}")
    images = np.ascontiguousarray(images, dtype=np.float32)
    if images.ndim != 3 or len(images) == 0:
        raise InvalidInput("images", f"expected (n, size, size) with n >= 1, got {images.shape}")
    ids = [stimulus_id(im, kind) for im in images]
    if len(set(ids)) != len(ids):
        raise InvalidInput("images", "the set holds the same image twice; show repeats in the recording instead")
    records = records or [{} for _ in ids]
    set_id = set_id_of(ids, kind)
    folder = Path(root) / set_id
    norms = np.linalg.norm(images.reshape(len(images), -1), axis=1)
    if folder.exists():
        try:
            existing = read_stimulus_set(folder)
        except InvalidInput as exc:
            raise ConflictError(folder, f"a damaged stimulus set is in the way ({exc.problem})", "remove it") from exc
        if existing.ids != ids:
            raise ConflictError(folder, "a different stimulus set has this id", "remove it by hand")
        return existing
    png_scale = float(np.abs(images).max())
    manifest = {
        "set_id": set_id,
        "kind": kind,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "image_size": int(images.shape[-1]),
        "norm": float(np.median(norms)),
        "png_scale": png_scale,
        "model_id": model_id,
        "array": ARRAY,
        **(extra or {}),
        "stimuli": [],
    }
    with atomic_path(folder) as tmp:
        (tmp / "png").mkdir(parents=True)
        np.save(tmp / ARRAY, images)
        for index, (sid, image, record) in enumerate(zip(ids, images, records, strict=True)):
            png = f"png/{sid}.png"
            _write_png(tmp / png, image, png_scale)
            pixels = np.ascontiguousarray(image, dtype=np.float32).tobytes()
            manifest["stimuli"].append(
                {"stimulus_id": sid, "index": index, "sha256": hashlib.sha256(pixels).hexdigest(), "png": png, **record}
            )
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return read_stimulus_set(folder)


def _write_png(path: Path, image: np.ndarray, scale: float) -> None:
    import imageio.v3 as iio

    pixels = np.clip(128 + 127 * image / max(scale, 1e-9), 0, 255).astype(np.uint8)
    iio.imwrite(path, pixels)


def read_stimulus_set(folder: Path) -> StimulusSetFiles:
    """Read and check a set folder; raises ``InvalidInput`` naming what is wrong."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise InvalidInput(folder, f"not a stimulus set: {MANIFEST} missing")
    try:
        manifest = json.loads(manifest_path.read_text())
        records = manifest["stimuli"]
        ids = [r["stimulus_id"] for r in records]
        images = np.load(folder / manifest.get("array", ARRAY), allow_pickle=False)
    except (ValueError, KeyError, OSError) as exc:
        raise InvalidInput(manifest_path, f"unreadable stimulus set: {exc}") from exc
    if len(images) != len(ids):
        raise InvalidInput(folder / ARRAY, f"{len(images)} images for {len(ids)} stimuli in the manifest")
    for record, image in zip(records, images, strict=True):
        if stimulus_id(image, manifest["kind"]) != record["stimulus_id"]:
            raise InvalidInput(folder / ARRAY, f"image {record['index']} does not match id {record['stimulus_id']}")
    return StimulusSetFiles(
        manifest["set_id"],
        manifest["kind"],
        folder,
        ids,
        images,
        float(manifest["norm"]),
        records,
        manifest.get("model_id", ""),
    )


def register_stimulus_set(db, files: StimulusSetFiles) -> bool:
    """Insert the set and its stimuli into the database (idempotent); True if it was new."""
    from labpipe.mei.schema import tables

    t = tables(db)
    if t.StimulusSet & {"set_id": files.set_id}:
        return False
    with t.schema.connection.transaction:
        t.StimulusSet.insert1(
            dict(
                set_id=files.set_id,
                kind=files.kind,
                folder=str(files.folder),
                created=dt.datetime.now(),
                n_stimuli=len(files.ids),
                image_size=int(files.images.shape[-1]),
                norm=files.norm,
                images=files.images,
                model_id=files.model_id,
            )
        )
        t.Stimulus.insert(
            [
                dict(stimulus_id=r["stimulus_id"], set_id=files.set_id, set_index=r["index"], sha256=r["sha256"])
                for r in files.records
            ],
            skip_duplicates=True,  # an image already exported in an earlier set keeps its first set
        )
    return True


def checksum_of(folder: Path) -> str:
    return sha256_file(Path(folder) / MANIFEST)
