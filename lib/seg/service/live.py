"""The folder a segment run publishes its live state to, and the service reads it from.

``<data>/jobs/<job>/live/`` holds ``progress.json`` (windows done of total),
``preview.bin`` (the newest preview: a small JSON header and the labels' raw
bytes, replaced whole by a rename, so a reader sees an old or a new preview,
never a torn one), ``result.json`` (the artifact files, when done) and
``error.json`` (the error's code, message and hint, when the run failed).
The run writes; the service watches the files (cheap ``stat`` calls), which
is how a preview reaches a WebSocket client within a fraction of a second of
its publication, whichever host and process the run is on, as long as both
see this folder.
"""

from __future__ import annotations

import json
import os
import struct
import time
from pathlib import Path

import numpy as np
from labpipe.errors import InvalidInput, LabpipeError

MAGIC = b"LPPV1\n"


def _replace(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary name beside ``path`` and rename it over (no fsync: live state is transient)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def error_code(error: BaseException) -> str:
    """The envelope code of a failed run's error."""
    from labpipe.seg.memory import OutOfMemory

    if isinstance(error, OutOfMemory):
        return "out_of_memory"
    if isinstance(error, InvalidInput):
        return "invalid_input"
    return "job_failed"


class LiveFolder:
    """One job's live folder: the run's writer methods (``publish_*``) and the service's readers."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    # ------------------------------------------------------------------------------------ the run writes

    def publish_progress(self, done: int, total: int) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        _replace(self.path / "progress.json", json.dumps({"done": done, "total": total, "at": time.time()}).encode())

    def publish_preview(self, preview, info) -> None:
        """The newest preview (a ``labpipe.seg.preview.Preview`` of the tomogram ``info``), replacing the last."""
        labels = np.ascontiguousarray(preview.labels)
        header = {
            "scale": preview.factor,
            "shape": list(labels.shape),
            "dtype": labels.dtype.name,
            "axes": "ZYX",
            "voxel_size_zyx": [v * preview.factor for v in info.voxel_size_zyx],
            "origin_xyz": list(info.origin_xyz),
            "done": preview.tiles_done,
            "total": preview.tiles_total,
            "published_at": time.time(),
        }
        head = json.dumps(header).encode()
        self.path.mkdir(parents=True, exist_ok=True)
        _replace(self.path / "preview.bin", MAGIC + struct.pack("<Q", len(head)) + head + labels.tobytes())

    def publish_result(self, result: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        _replace(self.path / "result.json", json.dumps(result).encode())

    def publish_error(self, error: BaseException) -> None:
        if isinstance(error, LabpipeError):
            body = {"code": error_code(error), "message": f"{error.subject}: {error.problem}", "hint": error.hint}
        else:
            body = {
                "code": "job_failed",
                "message": f"{type(error).__name__}: {error}"[:2000],
                "hint": "the server's Prefect UI shows the run's logs",
            }
        self.path.mkdir(parents=True, exist_ok=True)
        _replace(self.path / "error.json", json.dumps(body).encode())

    # ------------------------------------------------------------------------------------ the service reads

    def _json(self, name: str) -> dict | None:
        try:
            return json.loads((self.path / name).read_bytes())
        except (OSError, ValueError):
            return None

    def progress(self) -> dict | None:
        return self._json("progress.json")

    def result(self) -> dict | None:
        return self._json("result.json")

    def error(self) -> dict | None:
        return self._json("error.json")

    def preview_version(self) -> tuple[int, int, int] | None:
        """Changes whenever a new preview replaced the last (inode, mtime, size); None when there is none."""
        try:
            st = os.stat(self.path / "preview.bin")
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def read_preview(self) -> tuple[dict, bytes] | None:
        """(header, raw C-order label bytes) of the newest preview, or None."""
        try:
            data = (self.path / "preview.bin").read_bytes()
        except FileNotFoundError:
            return None
        if not data.startswith(MAGIC):
            return None
        (length,) = struct.unpack_from("<Q", data, len(MAGIC))
        start = len(MAGIC) + 8
        return json.loads(data[start : start + length]), data[start + length :]
