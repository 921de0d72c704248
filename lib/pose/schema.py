"""DataJoint tables of the pose lifecycle (``<prefix>_pose``), declared per database like ingest's.

``PoseEstimation`` is computed for every ingest ``PoseEstimationTask`` that names a model:
the task names its video (the ``RawFile``) and its model explicitly, and the result records
which model ran (the registry id, since an alias may move later), the video's frame rate and
resolution, the raw DeepLabCut .h5 (object store) and per bodypart the per-frame x, y and
likelihood. ``make`` is DataJoint's three-part make: the analysis runs outside any database
transaction, and the insert checks that the task did not change meanwhile.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import socket
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from labpipe.db.connect import LabDatabase, datajoint_module
from labpipe.ingest.schema import tables as ingest_tables
from labpipe.pose.settings import PoseAnalysisSettings


@dataclass
class PoseContext:
    """What a pose worker needs besides the database (passed to ``make`` through ``make_kwargs``)."""

    share: Path
    store: object  # labpipe.pose.models.PoseModelStore
    staging: Path  # one folder per task key is made under it
    settings: PoseAnalysisSettings = field(default_factory=PoseAnalysisSettings)
    slot: Callable[[], AbstractContextManager] = contextlib.nullcontext  # the flow passes the gpu slot
    extra_outputs: tuple[Path, ...] = ()  # more folders preflight must be able to write (the blob store)
    on_analysed: Callable[[dict, object], None] | None = None  # (key, PoseResult) after each analysis

    def staging_for(self, key: dict) -> Path:
        return self.staging / "__".join(str(key[k]).replace("/", "_") for k in ("session_id", "scan_id", "file_name"))


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _build(schema, ingest: SimpleNamespace) -> SimpleNamespace:
    dj = datajoint_module()
    from labpipe.pose.analyze import analyze_video
    from labpipe.pose.preflight import preflight

    PoseEstimationTask = ingest.PoseEstimationTask  # noqa: N806 - DataJoint resolves "-> PoseEstimationTask" here
    RawFile = ingest.RawFile  # noqa: N806
    Scan = ingest.Scan  # noqa: N806

    @schema
    class PoseModel(dj.Manual):
        """A pose model as published in the registry. Attributes: model_id, bodyparts, fps, resolution, errors."""

        definition = """
        model_id : char(8)                # registry id (hash of config and files)
        ---
        model_name : varchar(128)         # the alias it was published under
        bodyparts : varchar(1000)         # comma-separated, in model order
        fps : float64                     # frame rate of the videos it was trained on
        width : int32
        height : int32
        train_error_px : float32          # DeepLabCut evaluation, mean pixel error
        test_error_px : float32
        backbone : varchar(32)
        labelled_frames : int32
        deeplabcut : varchar(16)
        """

    @schema
    class PoseEstimation(dj.Computed):
        """DeepLabCut pose estimation of one task's video with its model."""

        definition = """
        -> PoseEstimationTask
        ---
        -> PoseModel
        model_name : varchar(64)          # as the task named it
        video_fps : float64
        video_width : int32
        video_height : int32
        n_frames : int32
        scorer : varchar(255)             # DeepLabCut's scorer name in the .h5
        device : varchar(16)
        worker : varchar(255)             # host:pid that analysed it
        analysed_at : datetime
        duration_s : float32
        mean_likelihood : float32
        raw_h5 : <object@blobs>           # DeepLabCut's result file as written
        """

        key_source = PoseEstimationTask & "model_name IS NOT NULL"

        class Bodypart(dj.Part):
            """Per-frame positions of one bodypart. Attributes: x, y, likelihood (frames,), mean_likelihood."""

            definition = """
            -> master
            bodypart : varchar(64)
            ---
            x : <npy@blobs>               # (frames,) pixels
            y : <npy@blobs>
            likelihood : <npy@blobs>
            mean_likelihood : float32
            """

        def make(self, key, context: PoseContext):
            # three parts: fetch (hashed, re-read before insert), compute (no transaction), insert
            fetched = _fetch(key)
            computed = yield fetched
            if computed is None:
                computed = _compute(key, fetched, context)
                yield computed
            _insert(self, key, computed, context)
            yield

    def _fetch(key: dict) -> tuple:
        folder = (Scan & key).fetch1("folder")
        checksum = (RawFile & key).fetch1("checksum")
        model_name = (PoseEstimationTask & key).fetch1("model_name")
        return (folder, checksum, model_name)

    def _compute(key: dict, fetched: tuple, context: PoseContext) -> tuple:
        folder, checksum, model_name = fetched
        video = Path(context.share) / folder / key["file_name"]
        staging = context.staging_for(key)
        expected = checksum if context.settings.check_checksum else None
        outputs = [staging.parent, *context.extra_outputs]
        info, card = preflight(video, model_name, context.store, outputs, expected_sha256=expected)
        model = context.store.resolve(card.model_id)
        with context.slot():  # GPU time starts only after every check passed
            result = analyze_video(
                model,
                video,
                staging,
                device=context.settings.device,
                batch_size=context.settings.batch_size,
                cpu_threads=context.settings.cpu_threads,
            )
        if context.on_analysed:
            context.on_analysed(key, result)
        return (info.as_json(), card, result, dt.datetime.now().replace(microsecond=0), worker_name())

    def _insert(table, key: dict, computed: tuple, context: PoseContext) -> None:
        info, card, result, analysed_at, worker = computed
        model_name = (PoseEstimationTask & key).fetch1("model_name")
        PoseModel.insert1(card.row(), skip_duplicates=True)
        likelihoods = result.mean_likelihood()
        table.insert1(
            dict(
                key,
                model_id=card.model_id,
                model_name=model_name,
                video_fps=info["fps"],
                video_width=info["width"],
                video_height=info["height"],
                n_frames=result.n_frames,
                scorer=result.scorer[:255],
                device=result.device[:16],
                worker=worker[:255],
                analysed_at=analysed_at,
                duration_s=result.seconds,
                mean_likelihood=float(sum(likelihoods.values()) / max(len(likelihoods), 1)),
                raw_h5=str(result.h5),
            )
        )
        table.Bodypart.insert(
            dict(
                key,
                bodypart=bodypart,
                x=result.x[:, i],
                y=result.y[:, i],
                likelihood=result.likelihood[:, i],
                mean_likelihood=likelihoods[bodypart],
            )
            for i, bodypart in enumerate(result.bodyparts)
        )
        shutil.rmtree(context.staging_for(key), ignore_errors=True)

    return SimpleNamespace(schema=schema, PoseModel=PoseModel, PoseEstimation=PoseEstimation, ingest=ingest)


def tables(db: LabDatabase) -> SimpleNamespace:
    """The pose tables on ``db`` (declared on first use, after ingest's, which they reference)."""
    ingest = ingest_tables(db)
    return db.tables("pose", lambda schema: _build(schema, ingest))


def record_model(t, card) -> None:
    """The model's row in the lab database (``t``: the pose tables, ``card``: its PoseModelCard), so results
    join to what the model was trained on."""
    t.PoseModel.insert1(card.row(), skip_duplicates=True)
