"""DataJoint tables of calcium imaging (``<prefix>_calcium``), in the spirit of element-calcium-imaging.

For every ingest ``ImagingTask`` (a .tif stack): ``ScanInfo`` (ScanImage metadata, the
TIFF checked whole), optionally ``Denoising`` (gpu pool, when a ``DenoiseTask`` asks for
it), ``Processing`` (suite2p on the cpu pool, on the denoised stack when there is one;
its plane folder is kept in the blob store), then ``MotionCorrection``, ``Segmentation``
(+``Mask``), ``Fluorescence`` (+``Trace``) and ``Activity`` (+``Trace``) per
``ActivityMethod``: suite2p's OASIS on the cpu pool, the CASCADE-style network on the gpu pool.

Long steps (denoising, suite2p) use DataJoint's three-part make: the computation runs
outside any database transaction, the insert checks that its inputs did not change.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from labpipe.calcium.settings import DenoiseSettings, SpikeSettings, Suite2pSettings
from labpipe.db.connect import LabDatabase, datajoint_module
from labpipe.ingest.schema import tables as ingest_tables

DENOISED_TIFF = "denoised.tif"  # in Denoising's stored folder
ACTIVITY_METHODS = {
    "oasis": "suite2p's OASIS non-negative deconvolution of neuropil-corrected F (cpu pool)",
    "cascade": "CASCADE-style 1-D CNN over dF/F windows, trained on simulated ground truth (gpu pool)",
}


@dataclass
class CalciumContext:
    """What a calcium worker needs besides the database (passed to ``make`` through ``make_kwargs``)."""

    share: Path
    scratch: Path  # suite2p binaries, denoised stacks before they go to the store, spike models
    suite2p: Suite2pSettings = field(default_factory=Suite2pSettings)
    denoise: DenoiseSettings = field(default_factory=DenoiseSettings)
    spikes: SpikeSettings = field(default_factory=SpikeSettings)

    def work_for(self, key: dict, what: str) -> Path:
        name = "__".join(str(key[k]).replace("/", "_") for k in ("session_id", "scan_id", "file_name"))
        return Path(self.scratch) / "calcium" / what / name


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _build(schema, ingest: SimpleNamespace) -> SimpleNamespace:
    dj = datajoint_module()
    from labpipe.calcium import denoise, scanimage, spikes, suite2p_run

    ImagingTask = ingest.ImagingTask  # noqa: F841, N806 - DataJoint resolves "-> ImagingTask" from this scope

    def tiff_path(key: dict, share: Path) -> Path:
        return Path(share) / (ingest.Scan & key).fetch1("folder") / key["file_name"]

    @schema
    class ScanInfo(dj.Imported):
        """A two-photon TIFF as its headers describe it. Attributes: frames, size, frame_rate, zoom, planes."""

        definition = """
        -> ImagingTask
        ---
        frames : int32
        height : int32
        width : int32
        frame_rate : float64          # Hz per plane
        zoom = null : float32
        planes : int32
        channels : int32
        scanimage_version : varchar(32)   # '' without a ScanImage header
        metadata_source : enum('scanimage', 'settings')
        """

        def make(self, key, context: CalciumContext):
            path = tiff_path(key, context.share)
            info = scanimage.read_scan_info(path, frame_rate=context.suite2p.frame_rate)
            self.insert1(dict(key, **info.row()))

    @schema
    class DenoiseTask(dj.Manual):
        """Denoise this stack before suite2p (an explicit choice per stack)."""

        definition = """
        -> ImagingTask
        """

    @schema
    class Denoising(dj.Computed):
        """Noise2Void denoising of a stack; the denoised TIFF is in the blob store. Attributes: snr estimate, loss."""

        definition = """
        -> DenoiseTask
        -> ScanInfo
        ---
        method : varchar(32)
        settings : json
        denoised : <object@blobs>     # folder holding the denoised stack, denoised.tif (float32)
        noise_before : float32        # estimated noise sd (pixel-to-pixel, MAD) of the raw stack
        noise_after : float32
        final_loss : float32
        device : varchar(16)
        worker : varchar(255)
        duration_s : float32
        """

        def make(self, key, context: CalciumContext):
            path = tiff_path(key, context.share)  # three-part make: fetch, compute outside a transaction, insert
            computed = yield path
            if computed is None:
                folder = context.work_for(key, "denoise") / "denoised"
                result = denoise.denoise_stack(path, folder / DENOISED_TIFF, context.denoise)
                # a folder: the blob store copies it file by file (a file path is read whole into memory,
                # 4 bytes per pixel per frame)
                computed = dict(result.row(), denoised=str(folder), worker=worker_name())
                yield computed
            self.insert1(dict(key, **computed))
            shutil.rmtree(context.work_for(key, "denoise"), ignore_errors=True)
            yield

    @schema
    class Processing(dj.Computed):
        """suite2p run on one stack (raw, or denoised when asked). Its plane folder is the record."""

        definition = """
        -> ScanInfo
        ---
        input : enum('raw', 'denoised')
        suite2p_version : varchar(32)
        settings : json               # labpipe's Suite2pSettings as run
        output : <object@blobs>       # suite2p's plane folder: ops, stat, F, Fneu, spks, iscell (.npy)
        worker : varchar(255)
        processed_at : datetime
        duration_s : float32
        """

        @property
        def key_source(self):
            return (ScanInfo.proj() - DenoiseTask.proj()) + Denoising.proj()

        def make(self, key, context: CalciumContext):
            fetched = _processing_input(key, context)  # three-part make, as Denoising
            computed = yield fetched
            if computed is None:
                computed = _run_processing(key, fetched, context)
                yield computed
            self.insert1(dict(key, **computed))
            shutil.rmtree(context.work_for(key, "suite2p"), ignore_errors=True)
            yield

    def _processing_input(key: dict, context: CalciumContext) -> tuple:
        if Denoising & key:
            stored = Path((Denoising & key).fetch1("denoised").full_path)
            stored = stored / DENOISED_TIFF if stored.is_dir() else stored  # rows before the folder: the file
            return ("denoised", str(stored), (ScanInfo & key).fetch1())
        return ("raw", str(tiff_path(key, context.share)), (ScanInfo & key).fetch1())

    def _run_processing(key: dict, fetched: tuple, context: CalciumContext) -> dict:
        kind, path, info_row = fetched
        started = time.monotonic()
        info = scanimage.read_scan_info(path, frame_rate=info_row["frame_rate"])
        work = context.work_for(key, "suite2p")
        output = suite2p_run.run_suite2p(Path(path), work / "plane0", info, context.suite2p, work)
        return dict(
            input=kind,
            suite2p_version=suite2p_run.suite2p_version(),
            settings=json.loads(context.suite2p.model_dump_json()),
            output=str(output),
            worker=worker_name(),
            processed_at=dt.datetime.now().replace(microsecond=0),
            duration_s=time.monotonic() - started,
        )

    def results(key: dict) -> suite2p_run.Suite2pResult:
        return suite2p_run.Suite2pResult.load((Processing & key).fetch1("output"))

    @schema
    class MotionCorrection(dj.Computed):
        """suite2p's registration: rigid shifts per frame and the summary images."""

        definition = """
        -> Processing
        ---
        y_shifts : <npy@blobs>        # (frames,) rigid shift applied, pixels
        x_shifts : <npy@blobs>
        y_std : float32
        x_std : float32
        max_abs_shift : float32
        nonrigid : bool
        ref_image : <npy@blobs>
        mean_image : <npy@blobs>
        enhanced_image : <npy@blobs>
        max_projection : <npy@blobs>
        correlation_image : <npy@blobs>
        """

        def make(self, key, context: CalciumContext | None = None):
            self.insert1(dict(key, **results(key).motion_row()))

    @schema
    class Segmentation(dj.Computed):
        """ROIs suite2p found, with its classifier's verdict. Attributes: n_rois, n_cells."""

        definition = """
        -> MotionCorrection
        ---
        n_rois : int32
        n_cells : int32
        """

        class Mask(dj.Part):
            """One ROI: its pixels and weights, centre, cell probability."""

            definition = """
            -> master
            roi_id : int32
            ---
            npix : int32
            center_y : float32
            center_x : float32
            ypix : <npy@blobs>
            xpix : <npy@blobs>
            weights : <npy@blobs>
            is_cell : bool
            cell_probability : float32
            compactness : float32
            skew : float32
            """

        def make(self, key, context: CalciumContext | None = None):
            rois = results(key).roi_rows()
            self.insert1(dict(key, n_rois=len(rois), n_cells=sum(r["is_cell"] for r in rois)))
            self.Mask.insert([dict(key, **roi) for roi in rois])

    @schema
    class Fluorescence(dj.Computed):
        """Fluorescence of every ROI and its neuropil, and dF/F."""

        definition = """
        -> Segmentation
        ---
        frame_rate : float64
        neuropil_coefficient : float32
        """

        class Trace(dj.Part):
            """One ROI's traces (frames,)."""

            definition = """
            -> master
            -> Segmentation.Mask
            ---
            f : <npy@blobs>
            fneu : <npy@blobs>
            dff : <npy@blobs>
            """

        def make(self, key, context: CalciumContext | None = None):
            result = results(key)
            self.insert1(dict(key, frame_rate=result.ops["fs"], **result.fluorescence_row()))
            self.Trace.insert(dict(key, **trace) for trace in result.trace_rows())

    @schema
    class ActivityMethod(dj.Lookup):
        """How spikes are inferred from fluorescence."""

        definition = """
        method : varchar(16)
        ---
        description : varchar(255)
        """
        contents = list(ACTIVITY_METHODS.items())

    @schema
    class Activity(dj.Computed):
        """Inferred spiking of every ROI by one method. Attributes: noise_level (CASCADE's nu, median over ROIs)."""

        definition = """
        -> Fluorescence
        -> ActivityMethod
        ---
        noise_level : float32         # 100 x median|diff dF/F| / sqrt(frame rate), median over ROIs
        model : varchar(255)          # what ran (OASIS, or the spike model's name)
        worker : varchar(255)
        """

        class Trace(dj.Part):
            """One ROI's inferred activity (frames,): OASIS spike amplitudes, or spikes per frame."""

            definition = """
            -> master
            -> Fluorescence.Trace
            ---
            activity : <npy@blobs>
            """

        def make(self, key, context: CalciumContext):
            traces = (Fluorescence.Trace & key).to_dicts(order_by="roi_id")
            frame_rate = (Fluorescence & key).fetch1("frame_rate")
            inferred = spikes.infer_activity(
                key["method"],
                traces,
                frame_rate,
                results_of=lambda: results(key),
                settings=context.spikes,
                models=Path(context.scratch) / "spike-models",
            )
            self.insert1(dict(key, noise_level=inferred.noise_level, model=inferred.model, worker=worker_name()))
            self.Trace.insert(dict(key, roi_id=roi, activity=values) for roi, values in inferred.traces.items())

    return SimpleNamespace(
        schema=schema,
        ingest=ingest,
        ScanInfo=ScanInfo,
        DenoiseTask=DenoiseTask,
        Denoising=Denoising,
        Processing=Processing,
        MotionCorrection=MotionCorrection,
        Segmentation=Segmentation,
        Fluorescence=Fluorescence,
        ActivityMethod=ActivityMethod,
        Activity=Activity,
    )


def tables(db: LabDatabase) -> SimpleNamespace:
    """The calcium tables on ``db`` (declared on first use, after ingest's, which they reference)."""
    ingest = ingest_tables(db)
    return db.tables("calcium", lambda schema: _build(schema, ingest))
