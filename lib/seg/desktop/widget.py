"""The napari dock widget: a tomogram opened here is segmented on the lab's server and overlaid when done.

The seed's happy path (section 3.1) in one panel: open an ``.mrc`` (its metadata shown), upload it (resumable:
a dropped connection is retried part by part, and pressing Upload again sends only the parts the server lacks),
submit a job with nnU-Net's options, watch the live preview as a labels layer over the volume, get the mask
through its signed URL and overlay it, export NIfTI/NRRD, cancel.

Alignment: napari places voxel ``i`` of a layer at ``translate + i * scale``. The volume gets its voxel size as
scale and its voxel 0's position as translate (``labpipe.seg.artifacts.voxel0_position``, ZYX); a preview at
factor ``f`` holds voxel ``f*i`` at element ``i``, so it gets ``f`` times the scale and the same translate; the
mask is placed from its own MRC header, which the server copies from the tomogram's.

Threads: every network call runs on a worker thread (``concurrent.futures``); results come back to the Qt thread
through signals. Previews arriving faster than the canvas draws are dropped: only the newest is drawn. A file is
read for its fingerprint (SHA-256 and part checksums) on a thread of its own as soon as it is opened, so Upload
sends at once (an upload pressed sooner waits for that reading rather than reading the file again).
"""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from labpipe.errors import LabpipeError
from labpipe.seg.artifacts import voxel0_position, write_mask_nifti, write_mask_nrrd
from labpipe.seg.client import (
    DEFAULT_PART_BYTES,
    Backoff,
    JobOptions,
    SegmentationClient,
    artifact_urls,
    file_digests,
    read_token,
)
from labpipe.seg.mrc import TomogramInfo, open_volume, read_header
from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

PREVIEW_LAYER = "preview"
MASK_LAYER = "mask"


def placement(info: TomogramInfo, factor: int = 1) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """napari ``(scale, translate)`` (ZYX, Angstrom) of a layer holding every ``factor``-th voxel of ``info``."""
    scale = tuple(float(v) * factor for v in info.voxel_size_zyx)
    return scale, tuple(reversed(voxel0_position(info)))


def metadata_text(info: TomogramInfo) -> str:
    """What the panel shows of a tomogram: size, voxel size, origin, data type."""
    z, y, x = info.shape_zyx
    size = (
        f"{info.file_bytes / (1 << 30):.2f} GiB"
        if info.file_bytes >= 1 << 30
        else f"{info.file_bytes / (1 << 20):.1f} MiB"
    )
    vz, vy, vx = info.voxel_size_zyx
    ox, oy, oz = info.origin_xyz
    return (
        f"{x} x {y} x {z} voxels (X Y Z), {info.dtype} (mode {info.mode}), {size}\n"
        f"voxel {vx:g} x {vy:g} x {vz:g} A, origin ({ox:g}, {oy:g}, {oz:g}) A"
    )


class _Signals(QObject):
    """Worker threads -> the Qt thread (``object`` types: byte counts pass 2**31)."""

    status = Signal(str)
    upload_progress = Signal(object, object)
    job_progress = Signal(object, object)
    finished = Signal(str, object)  # what finished, its result
    failed = Signal(str, object)  # what failed, the exception
    message = Signal(object)  # a WebSocket message other than a preview
    preview_ready = Signal()


class SegmentationWidget(QWidget):
    """Dock widget of the labpipe segmentation service (``napari.yaml`` contributes it)."""

    def __init__(self, napari_viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.signals = _Signals()
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="labpipe-seg")
        # an opened file is read for its fingerprint at once, while its metadata is looked at: Upload then sends
        self.fingerprints = ThreadPoolExecutor(max_workers=1, thread_name_prefix="labpipe-seg-fingerprint")
        self.fingerprinting: Future | None = None
        self.client: SegmentationClient | None = None
        self.info: TomogramInfo | None = None
        self.upload_result = None
        self.job_id: str | None = None
        self.job_state = ""
        self.stream = None
        self.mask_path: Path | None = None
        self.download_folder: Path | None = None  # default: <tomogram folder>/<stem>-<job id>/
        self.part_bytes = DEFAULT_PART_BYTES
        self.backoff = Backoff()  # retries of a dropped request before the panel reports it
        self.preview_latencies: list[float] = []  # runner publish -> layer updated, seconds
        self.previews_shown = 0
        self._latest_preview = None
        self._preview_lock = threading.Lock()
        self._volume = contextlib.ExitStack()
        self._cancel_upload = threading.Event()
        self._build()
        self._connect_signals()
        self._update_buttons()

    # -- layout ---------------------------------------------------------------------------------------------

    def _build(self) -> None:
        layout = QVBoxLayout(self)
        server = QGroupBox("Server")
        form = QFormLayout(server)
        self.server_edit = QLineEdit("https://")
        self.token_edit = QLineEdit()
        self.token_edit.setPlaceholderText("file with your token (or $LABPIPE_SEG_TOKEN)")
        form.addRow("URL", self.server_edit)
        form.addRow("Token file", self.token_edit)
        layout.addWidget(server)

        tomogram = QGroupBox("Tomogram")
        box = QVBoxLayout(tomogram)
        self.open_button = QPushButton("Open .mrc…")
        self.metadata_label = QLabel("no tomogram")
        self.metadata_label.setWordWrap(True)
        self.metadata_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        box.addWidget(self.open_button)
        box.addWidget(self.metadata_label)
        layout.addWidget(tomogram)

        options = QGroupBox("Job")
        form = QFormLayout(options)
        self.model_combo = QComboBox()
        self.model_combo.setEditable(True)
        self.model_combo.lineEdit().setPlaceholderText("server default")
        self.step_spin = QDoubleSpinBox(minimum=0.05, maximum=1.0, singleStep=0.05, value=0.5)
        self.mirroring_check = QCheckBox("test-time mirroring", checked=True)
        self.fp16_check = QCheckBox("half precision (fp16)", checked=True)
        self.factor_spin = QSpinBox(minimum=0, maximum=16, value=0)
        self.factor_spin.setSpecialValueText("auto")
        self.factor_spin.setSuffix(". voxel")
        self.every_spin = QDoubleSpinBox(minimum=0.0, maximum=600.0, singleStep=1.0, value=5.0, suffix=" s")
        form.addRow("Model", self.model_combo)
        form.addRow("Step size", self.step_spin)
        form.addRow("", self.mirroring_check)
        form.addRow("", self.fp16_check)
        form.addRow("Preview: every", self.factor_spin)
        form.addRow("Preview: each", self.every_spin)
        layout.addWidget(options)

        buttons = QHBoxLayout()
        self.upload_button = QPushButton("Upload")
        self.submit_button = QPushButton("Segment")
        self.cancel_button = QPushButton("Cancel")
        self.export_button = QPushButton("Export NIfTI/NRRD…")
        for button in (self.upload_button, self.submit_button, self.cancel_button):
            buttons.addWidget(button)
        layout.addLayout(buttons)
        layout.addWidget(self.export_button)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        layout.addWidget(self.progress)
        layout.addWidget(self.status_label)
        layout.addStretch()

    def _connect_signals(self) -> None:
        self.open_button.clicked.connect(self._choose_tomogram)
        self.server_edit.editingFinished.connect(self.refresh_models)
        self.token_edit.editingFinished.connect(self.refresh_models)
        self.upload_button.clicked.connect(self.start_upload)
        self.submit_button.clicked.connect(self.start_job)
        self.cancel_button.clicked.connect(self.cancel_job)
        self.export_button.clicked.connect(self._choose_export_folder)
        s = self.signals
        s.status.connect(self.status_label.setText)
        s.upload_progress.connect(self._show_progress)
        s.job_progress.connect(self._show_progress)
        s.finished.connect(self._on_finished)
        s.failed.connect(self._on_failed)
        s.message.connect(self._on_message)
        s.preview_ready.connect(self._draw_latest_preview)

    def _update_buttons(self) -> None:
        running = self.job_state in ("queued", "running", "previewing")
        busy = running or self.job_state in ("uploading", "submitting")
        self.upload_button.setEnabled(self.info is not None and not busy)
        self.submit_button.setEnabled(self.upload_result is not None and not busy)
        self.cancel_button.setEnabled(bool(self.job_id) and running)
        self.export_button.setEnabled(self.mask_path is not None)

    def _show_progress(self, done, total) -> None:
        self.progress.setValue(int(1000 * done / total) if total else 0)

    # -- the tomogram ---------------------------------------------------------------------------------------

    def _choose_tomogram(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a tomogram", "", "MRC tomograms (*.mrc *.rec *.map)")
        if path:
            self.open_tomogram(Path(path))

    def open_tomogram(self, path: Path) -> TomogramInfo | None:
        """Read the header (checked as the server will), show the metadata, add the volume memory-mapped."""
        try:
            info = read_header(Path(path))
        except LabpipeError as exc:
            self._report(exc)
            return None
        self._volume.close()
        data = self._volume.enter_context(open_volume(Path(path)))
        self.info, self.upload_result, self.job_id, self.job_state, self.mask_path = info, None, None, "", None
        self.metadata_label.setText(f"{Path(path).name}\n{metadata_text(info)}")
        scale, translate = placement(info)
        name = Path(path).stem
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        self.viewer.add_image(data, name=name, scale=scale, translate=translate, colormap="gray")
        self.status_label.setText("opened; next: Upload")
        self._update_buttons()
        # errors are the upload's to report (it reads the file again); a file changed meanwhile has another key
        self.fingerprinting = self.fingerprints.submit(file_digests, Path(path), self.part_bytes)
        return info

    # -- network calls on worker threads --------------------------------------------------------------------

    def _client(self) -> SegmentationClient:
        url = self.server_edit.text().strip()
        token = read_token(Path(self.token_edit.text()).expanduser() if self.token_edit.text().strip() else None)
        if self.client is None or self.client.base_url != url.rstrip("/") or self.client.token != token:
            if self.client is not None:
                self.client.close()
            self.client = SegmentationClient(url, token, backoff=self.backoff)
        return self.client

    def _run(self, what: str, work) -> None:
        """``work()`` on a worker thread; its result or exception comes back as ``finished``/``failed``."""

        def task():
            try:
                self.signals.finished.emit(what, work())
            except Exception as exc:  # reported in the panel, never raised into Qt's event loop
                self.signals.failed.emit(what, exc)

        self.pool.submit(task)

    def refresh_models(self) -> None:
        """Fill the model list from ``/v1/server/info`` (which also proves the URL and token work)."""
        try:
            client = self._client()
        except LabpipeError as exc:
            self._report(exc)
            return
        self._run("info", client.server_info)

    def start_upload(self) -> None:
        """Upload the open tomogram; the parts the server already holds are not sent again."""
        if self.info is None:
            return
        try:
            client = self._client()
        except LabpipeError as exc:
            self._report(exc)
            return
        self._cancel_upload.clear()
        path = Path(self.info.path)
        self.job_state = "uploading"
        self._update_buttons()
        self.signals.status.emit(f"fingerprinting {path.name}…")

        def work():
            def sent(done, total):
                self.signals.upload_progress.emit(done, total)

            def hashed(done, total):
                self.signals.status.emit(f"fingerprinting {path.name}: {100 * done // max(total, 1)} %")

            self.signals.status.emit(f"uploading {path.name}…")
            return client.upload(
                path, part_bytes=self.part_bytes, progress=sent, hash_progress=hashed, cancel=self._cancel_upload
            )

        self._run("upload", work)

    def job_options(self) -> JobOptions:
        model = self.model_combo.currentText().strip() or None
        return JobOptions(
            model,
            self.step_spin.value(),
            self.mirroring_check.isChecked(),
            self.fp16_check.isChecked(),
            self.factor_spin.value() or None,
            self.every_spin.value(),
        )

    def start_job(self) -> None:
        """Submit a job on the uploaded file and follow it over the WebSocket."""
        if self.upload_result is None:
            return
        client, options, file_id = self._client(), self.job_options(), self.upload_result.file_id
        self.job_state = "submitting"
        self._update_buttons()
        self._run("submit", lambda: client.submit(options, file_id=file_id))

    def cancel_job(self) -> None:
        if self.job_id:
            client, job_id = self._client(), self.job_id
            self.signals.status.emit(f"cancelling job {job_id[:8]}…")
            self._run("cancel", lambda: client.cancel(job_id))

    def _follow(self, job_id: str) -> None:
        if self.stream is not None:
            self.stream.stop(timeout=0)
        self.stream = self._client().preview_stream(job_id, self._on_stream_message, on_state=self._on_stream_state)

    def _on_stream_state(self, state: str, count: int) -> None:
        if state == "reconnecting":
            self.signals.status.emit(f"preview stream dropped; reconnecting (attempt {count})")

    def _on_stream_message(self, message: dict) -> None:
        """On the stream's thread: keep only the newest preview, hand everything else over as it comes."""
        if message.get("type") == "preview":
            with self._preview_lock:
                pending = self._latest_preview is not None
                self._latest_preview = message
            if not pending:  # one queued draw at a time: a lagging canvas skips to the newest preview
                self.signals.preview_ready.emit()
            self.signals.job_progress.emit(message.get("done", 0), message.get("total", 0))
        else:
            self.signals.message.emit(message)

    def _download_mask(self, urls: dict[str, str]) -> None:
        client, job_id, info = self._client(), self.job_id, self.info
        folder = self.download_folder or Path(info.path).parent / f"{Path(info.path).stem}-{job_id[:8]}"
        self.signals.status.emit("downloading the mask…")
        names = [n for n in ("mask.mrc", "stats.json") if n in urls]
        self._run("download", lambda: {n: client.download(urls[n], folder / n) for n in names})

    def export(self, folder: Path) -> dict[str, Path]:
        """Write mask.nii.gz and mask.nrrd beside each other in ``folder`` (placed as the tomogram)."""
        mask_info = read_header(self.mask_path)
        folder.mkdir(parents=True, exist_ok=True)
        with open_volume(self.mask_path) as labels:
            labels = np.asarray(labels).view(np.uint8)
            return {
                "mask.nii.gz": write_mask_nifti(folder / "mask.nii.gz", labels, mask_info),
                "mask.nrrd": write_mask_nrrd(folder / "mask.nrrd", labels, mask_info),
            }

    def _choose_export_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export the mask to")
        if folder:
            self._run("export", lambda: self.export(Path(folder)))

    # -- results, on the Qt thread --------------------------------------------------------------------------

    def _on_finished(self, what: str, result) -> None:
        if what == "upload":
            self.upload_result, self.job_state = result, ""
            held = (
                f", {result.held_at_start} of {result.parts} parts were already there" if result.held_at_start else ""
            )
            self.status_label.setText(f"uploaded ({result.sent_bytes} bytes sent{held}); next: Segment")
        elif what == "submit":
            self.job_id, self.job_state = result.id, result.state
            self.status_label.setText(f"job {result.id[:8]}: {result.state}")
            self._follow(result.id)
        elif what == "cancel":
            self.status_label.setText(f"job {result.id[:8]}: cancel requested ({result.state})")
        elif what == "download":
            self.mask_path = result["mask.mrc"]
            self._show_mask(self.mask_path)
            self.status_label.setText(f"completed: mask in {self.mask_path.parent}")
        elif what == "info":
            current = self.model_combo.currentText()
            self.model_combo.clear()
            self.model_combo.addItems(sorted(m["name"] for m in result.get("models", [])))
            self.model_combo.setCurrentText(current)
            gpus = ", ".join(g["name"] for g in result.get("gpus", [])) or result.get("device", "")
            self.status_label.setText(f"connected as {result.get('user')}: labpipe {result.get('version')} on {gpus}")
        elif what == "export":
            self.status_label.setText("exported " + ", ".join(str(p) for p in result.values()))
        self._update_buttons()

    def _on_failed(self, what: str, exc: BaseException) -> None:
        if what in ("upload", "submit"):
            self.job_state = ""
        self._report(exc, prefix=f"{what} failed: ")
        self._update_buttons()

    def _report(self, exc: BaseException, prefix: str = "") -> None:
        if isinstance(exc, LabpipeError):
            text = f"{prefix}{exc.problem}" + (f"\nhint: {exc.hint}" if exc.hint else "")
        else:
            text = f"{prefix}{type(exc).__name__}: {exc}"
        self.status_label.setText(text)

    def _on_message(self, message: dict) -> None:
        kind = message.get("type")
        if kind == "progress":
            self.job_state = message.get("state", self.job_state)
            self._show_progress(message.get("done", 0), message.get("total", 0))
            self.status_label.setText(f"job {self.job_id[:8]}: {self.job_state} ({message.get('done', 0)} windows)")
        elif kind == "completed":
            self.job_state = "completed"
            self._download_mask(artifact_urls(message.get("artifacts")))
        elif kind == "error":
            self.job_state = message.get("state") or "failed"
            hint = f"\nhint: {message['hint']}" if message.get("hint") else ""
            self.status_label.setText(f"job {self.job_state}: {message.get('message', '')}{hint}")
        self._update_buttons()

    def _draw_latest_preview(self) -> None:
        with self._preview_lock:
            message, self._latest_preview = self._latest_preview, None
        if message is None or self.info is None:
            return
        frame = message["frame"]
        scale, translate = placement(self.info, frame.scale[0])
        if PREVIEW_LAYER in self.viewer.layers:
            layer = self.viewer.layers[PREVIEW_LAYER]
            if tuple(layer.scale) != scale or tuple(layer.translate) != translate:  # each change redraws
                layer.scale, layer.translate = scale, translate
            layer.data = frame.labels
        else:
            self.viewer.add_labels(frame.labels, name=PREVIEW_LAYER, scale=scale, translate=translate, opacity=0.6)
        self.previews_shown += 1
        if frame.published_at:
            self.preview_latencies.append(time.time() - frame.published_at)
        self.job_state = "previewing" if self.job_state in ("queued", "running", "") else self.job_state
        self.status_label.setText(f"job {self.job_id[:8]}: preview {message.get('seq')} (x{frame.scale[0]})")

    def _show_mask(self, path: Path) -> None:
        """Overlay the mask placed by its own header (the server copies the tomogram's geometry into it)."""
        mask_info = read_header(path)
        with open_volume(path) as data:
            labels = np.array(data).view(np.uint8)
        scale, translate = placement(mask_info)
        if PREVIEW_LAYER in self.viewer.layers:
            self.viewer.layers[PREVIEW_LAYER].visible = False
        if MASK_LAYER in self.viewer.layers:
            self.viewer.layers.remove(MASK_LAYER)
        self.viewer.add_labels(labels, name=MASK_LAYER, scale=scale, translate=translate, opacity=0.6)

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Stop the stream and worker threads, close the connection and the memory map."""
        self._cancel_upload.set()
        if self.stream is not None:
            self.stream.stop()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.fingerprints.shutdown(wait=False, cancel_futures=True)
        if self.client is not None:
            self.client.close()
        self._volume.close()
