"""Previews while tiles complete: current labels every ``factor``-th voxel, as an MRC and a PNG.

The factor is an integer, and element ``[i, j, k]`` of a preview is source
voxel ``[f*i, f*j, f*k]`` (no averaging, no interpolation), so a preview
overlays the tomogram exactly: its MRC has voxel size ``f`` times the
tomogram's and the same origin. The PNG shows three orthogonal central
slices, labels in colour over the tomogram, windows not predicted yet dimmed.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from labpipe.seg.mrc import TomogramInfo, write_mrc

# background transparent, then distinct colours (membrane orange, particle cyan, ...)
COLOURS = np.array(
    [[0, 0, 0], [255, 140, 0], [0, 200, 255], [160, 255, 60], [255, 60, 160], [180, 120, 255], [255, 230, 0]],
    np.uint8,
)


@dataclass
class Preview:
    factor: int
    labels: np.ndarray  # ZYX, every factor-th voxel
    pending: np.ndarray  # True where no window has been predicted yet
    tiles_done: int
    tiles_total: int
    path: Path | None = None


def choose_factor(shape_zyx: tuple[int, int, int], requested: int | None = None) -> int:
    """4, or 8 when a x4 preview would still exceed 256 voxels along some axis; or the requested integer."""
    if requested is not None:
        if int(requested) != requested or requested < 1:
            raise ValueError(f"preview factor {requested!r}: expected a positive integer (4 or 8)")
        return int(requested)
    return 4 if max(shape_zyx) <= 4 * 256 else 8


def downsample(data: np.ndarray, factor: int) -> np.ndarray:
    """Every ``factor``-th voxel of a (memory-mapped) ZYX array, as float32."""
    return np.asarray(data[::factor, ::factor, ::factor], dtype=np.float32)


def write_preview_mrc(path: Path, preview: Preview, info: TomogramInfo) -> Path:
    """Replace the latest preview atomically (older previews are overwritten, never accumulated)."""
    voxel = tuple(v * preview.factor for v in info.voxel_size_zyx)
    return write_mrc(
        path,
        preview.labels.view(np.int8),
        voxel_size_zyx=voxel,
        origin_xyz=info.origin_xyz,
        labels=[f"labpipe preview x{preview.factor}: {preview.tiles_done}/{preview.tiles_total} tiles"],
    )


def _panel(image: np.ndarray, labels: np.ndarray, pending: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, [1, 99]) if image.size else (0.0, 1.0)
    gray = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.repeat((gray * 255).astype(np.uint8)[..., None], 3, axis=-1)
    colours = COLOURS[np.minimum(labels, len(COLOURS) - 1)]
    mask = labels > 0
    rgb[mask] = (0.45 * rgb[mask] + 0.55 * colours[mask]).astype(np.uint8)
    rgb[pending] = (rgb[pending] * 0.35).astype(np.uint8)
    return rgb


def preview_png(preview: Preview, image: np.ndarray, *, panel_size: int = 256) -> bytes:
    """Three orthogonal central slices (XY at mid Z, XZ at mid Y, YZ at mid X) side by side, as PNG bytes."""
    from PIL import Image

    z, y, x = (s // 2 for s in preview.labels.shape)
    cuts = [
        (slice(z, z + 1), slice(None), slice(None)),
        (slice(None), slice(y, y + 1), slice(None)),
        (slice(None), slice(None), slice(x, x + 1)),
    ]
    panels = []
    for cut in cuts:
        rgb = _panel(np.squeeze(image[cut]), np.squeeze(preview.labels[cut]), np.squeeze(preview.pending[cut]))
        scale = max(1, panel_size // max(rgb.shape[:2]))
        panels.append(np.kron(rgb, np.ones((scale, scale, 1), np.uint8)))  # nearest-neighbour: voxels stay square
    height = max(p.shape[0] for p in panels)
    gap = np.full((height, 6, 3), 255, np.uint8)
    row = []
    for panel in panels:
        padded = np.full((height, panel.shape[1], 3), 255, np.uint8)
        padded[: panel.shape[0]] = panel
        row += [padded, gap]
    buffer = io.BytesIO()
    Image.fromarray(np.concatenate(row[:-1], axis=1)).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()
