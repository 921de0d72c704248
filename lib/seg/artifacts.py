"""A run's products: mask.mrc, mask.nii.gz, mask.nrrd and stats.json, aligned with the input tomogram.

Alignment: the mask has the tomogram's shape, voxel size, MRC origin and
start indices (mask.mrc copies the header fields, so every MRC reader places
it exactly where it places the tomogram). NIfTI and NRRD carry the spacing in
Angstrom and put voxel 0 at the MRC origin, or at start x voxel size when the
origin is zero (the convention UCSF ChimeraX uses); their arrays are XYZ as
those formats expect. Statistics per label: voxel count, volume in nm^3 and
surface area in nm^2 of the marching-cubes mesh, computed slab by slab.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from labpipe.seg import require
from labpipe.seg.mrc import TomogramInfo, slabs, write_mrc

MASK_FILES = ("mask.mrc", "mask.nii.gz", "mask.nrrd", "stats.json")
STATS_SLAB_BYTES = 64 << 20


def voxel0_position(info: TomogramInfo) -> tuple[float, float, float]:
    """Physical XYZ position (Angstrom) of voxel (0, 0, 0)."""
    if any(info.origin_xyz):
        return tuple(info.origin_xyz)
    voxel_xyz = tuple(reversed(info.voxel_size_zyx))
    return tuple(float(s) * v for s, v in zip(info.start_xyz, voxel_xyz, strict=True))


def write_mask_mrc(path: Path, labels: np.ndarray, info: TomogramInfo, label_names: dict[int, str]) -> Path:
    names = " ".join(f"{v}={n}" for v, n in sorted(label_names.items()))
    # labels < 128 fit MRC mode 0 (int8) byte for byte
    data = labels.view(np.int8) if labels.dtype == np.uint8 else labels
    return write_mrc(
        path,
        data,
        voxel_size_zyx=info.voxel_size_zyx,
        origin_xyz=info.origin_xyz,
        start_xyz=info.start_xyz,
        labels=[f"labpipe segmentation mask: {names}"[:80]],
    )


def write_mask_nifti(path: Path, labels: np.ndarray, info: TomogramInfo) -> Path:
    nibabel = require("nibabel")
    affine = np.diag([*reversed(info.voxel_size_zyx), 1.0])
    affine[:3, 3] = voxel0_position(info)
    image = nibabel.Nifti1Image(labels.transpose(2, 1, 0), affine)  # ZYX -> XYZ, no copy (F-ordered view)
    image.header.set_xyzt_units("unknown")  # NIfTI has no Angstrom unit; the description says it
    image.header["descrip"] = b"labpipe mask; spacing in Angstrom"
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nibabel.save(image, path)
    return path


def write_mask_nrrd(path: Path, labels: np.ndarray, info: TomogramInfo) -> Path:
    nrrd = require("nrrd")
    header = {
        "space dimension": 3,
        "space directions": np.diag(list(reversed(info.voxel_size_zyx))),
        "space origin": np.array(voxel0_position(info)),
        "space units": ["A", "A", "A"],
        "kinds": ["domain", "domain", "domain"],
        "encoding": "gzip",
    }
    nrrd.write(str(path), np.ascontiguousarray(labels), header, index_order="C")
    return path


def _cell_slabs(depth: int, plane_bytes: int) -> list[tuple[int, int]]:
    """Ranges of marching-cubes cell rows [a, b) over a volume padded by one plane on each side."""
    step = max(1, STATS_SLAB_BYTES // max(plane_bytes, 1))
    return [(a, min(a + step, depth + 1)) for a in range(0, depth + 1, step)]


def surface_area(mask_source: Callable[[slice], np.ndarray], shape: tuple[int, int, int], spacing_nm) -> float:
    """Marching-cubes area (level 0.5) of a binary volume padded by zeros, computed in slabs.

    Slab ``[a, b)`` meshes the cells between padded planes a..b, so each cell
    is meshed exactly once and the areas add up to the whole volume's.
    """
    measure = require("skimage.measure")
    depth, ny, nx = shape
    total = 0.0
    for a, b in _cell_slabs(depth, (ny + 2) * (nx + 2) * 4):
        block = np.zeros((b - a + 1, ny + 2, nx + 2), np.float32)
        lo, hi = max(a, 1), min(b, depth)  # padded plane k holds volume plane k - 1
        if hi >= lo:
            block[lo - a : hi - a + 1, 1:-1, 1:-1] = mask_source(slice(lo - 1, hi))
        if block.min() == block.max():
            continue
        verts, faces, _, _ = measure.marching_cubes(block, level=0.5, spacing=tuple(spacing_nm))
        total += float(measure.mesh_surface_area(verts, faces))
    return total


def label_statistics(labels: np.ndarray, voxel_size_zyx, label_names: dict[int, str]) -> dict[str, dict]:
    """Per label: value, voxel count, fraction, volume (nm^3), surface area (nm^2; not for background)."""
    counts = np.zeros(max(label_names) + 1, np.int64)
    for zs in slabs(labels.shape, labels.dtype.itemsize):
        counts += np.bincount(labels[zs].ravel(), minlength=counts.size)[: counts.size]
    spacing_nm = tuple(v / 10.0 for v in voxel_size_zyx)
    voxel_nm3 = math.prod(spacing_nm)
    total = max(int(counts.sum()), 1)
    stats = {}
    for value, name in sorted(label_names.items()):
        count = int(counts[value])
        area = None
        if value != 0:
            area = surface_area(lambda zs, v=value: labels[zs] == v, labels.shape, spacing_nm) if count else 0.0
        stats[name] = {
            "value": value,
            "voxels": count,
            "fraction": count / total,
            "volume_nm3": count * voxel_nm3,
            "surface_area_nm2": area,
        }
    return stats


def write_artifacts(
    folder: Path, labels: np.ndarray, info: TomogramInfo, label_names: dict[int, str], provenance: dict
) -> dict:
    """Write the four artifacts into ``folder`` (a staging folder the caller renames into place)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_mask_mrc(folder / "mask.mrc", labels, info, label_names)
    write_mask_nifti(folder / "mask.nii.gz", labels, info)
    write_mask_nrrd(folder / "mask.nrrd", labels, info)
    stats = {
        **provenance,
        "shape_zyx": list(info.shape_zyx),
        "voxel_size_zyx_angstrom": list(info.voxel_size_zyx),
        "origin_xyz_angstrom": list(info.origin_xyz),
        "start_xyz": list(info.start_xyz),
        "labels": label_statistics(labels, info.voxel_size_zyx, label_names),
    }
    (folder / "stats.json").write_text(json.dumps(stats, indent=1))
    return stats
