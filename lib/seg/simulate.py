"""Synthetic cryo-ET tomograms with their true label maps (tests, the demo, tiny training sets).

What makes them look like tomograms: membranes are thin (~4 nm) curved shells
(vesicles as ellipsoids, one undulating sheet of a cell membrane), particles are
ribosome-sized lumpy blobs, density is dark on a light background as in
defocus phase contrast, the Fourier transform loses a missing wedge (tilt
series only cover +-60 degrees about Y), a low-pass stands in for the CTF
envelope, and the noise is strong. Labels: 0 background, 1 membrane, 2 particle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from labpipe.files import atomic_write_text
from labpipe.seg.mrc import write_mrc
from scipy import ndimage

LABELS = {0: "background", 1: "membrane", 2: "particle"}


@dataclass
class SimulatedTomogram:
    """A simulated volume (float32, ZYX), its labels (uint8) and what was placed where."""

    volume: np.ndarray
    labels: np.ndarray
    voxel_size: float  # Angstrom, isotropic
    objects: list[dict] = field(default_factory=list)
    label_names: dict[int, str] = field(default_factory=lambda: dict(LABELS))


def _grid(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.ogrid[: shape[0], : shape[1], : shape[2]]


def _vesicle(shape, rng, voxel_nm: float, thickness_nm: float) -> tuple[np.ndarray, dict]:
    z, y, x = _grid(shape)
    radii = rng.uniform(0.18, 0.34, 3) * min(shape)
    centre = [rng.uniform(r * 0.6, s - r * 0.6) for r, s in zip(radii, shape, strict=True)]
    rho = np.sqrt(sum(((c - m) / r) ** 2 for c, m, r in zip((z, y, x), centre, radii, strict=True)))
    # distance to the ellipsoid surface, approximated in voxels by the mean radius
    distance = np.abs(rho - 1.0) * radii.mean()
    shell = distance <= thickness_nm / voxel_nm / 2
    return shell, {"kind": "vesicle", "centre_zyx": [float(c) for c in centre], "radii_zyx": radii.tolist()}


def _sheet(shape, rng, voxel_nm: float, thickness_nm: float) -> tuple[np.ndarray, dict]:
    """An undulating plasma membrane crossing the volume roughly along Z (so the wedge does not hide it)."""
    z, y, x = _grid(shape)
    base = rng.uniform(0.12, 0.25) * shape[2]
    amplitude, wavelength = rng.uniform(1.5, 4.0), rng.uniform(0.8, 1.6) * max(shape[0], shape[1])
    position = base + amplitude * np.sin(2 * np.pi * y / wavelength) + 0.1 * z
    sheet = np.abs(x - position) <= thickness_nm / voxel_nm / 2
    return sheet, {"kind": "membrane sheet", "x_position": float(base), "amplitude": float(amplitude)}


def _particle(shape, rng, voxel_nm: float, taken: np.ndarray) -> tuple[np.ndarray, dict] | None:
    radius = rng.uniform(9.0, 13.0) / voxel_nm  # ribosomes are ~25 nm across
    for _ in range(30):  # rejection sampling: particles do not overlap membranes or each other
        centre = rng.uniform(radius + 1, np.array(shape) - radius - 1)
        lo = np.maximum(np.floor(centre - radius - 1).astype(int), 0)
        hi = np.minimum(np.ceil(centre + radius + 2).astype(int), shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        z, y, x = np.ogrid[box]
        # two lobes (large and small subunit) make the blob lumpy and anisotropic
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        body = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius**2
        lobe_c = centre + axis * radius * 0.55
        lobe = (z - lobe_c[0]) ** 2 + (y - lobe_c[1]) ** 2 + (x - lobe_c[2]) ** 2 <= (radius * 0.6) ** 2
        blob = body | lobe
        if (taken[box] & blob).any():
            continue
        mask = np.zeros(shape, bool)
        mask[box] = blob
        return mask, {"kind": "particle", "centre_zyx": centre.tolist(), "radius_voxels": float(radius)}
    return None


def missing_wedge(volume: np.ndarray, max_tilt_deg: float = 60.0) -> np.ndarray:
    """Remove the Fourier components a +-max_tilt tilt series about Y never measures."""
    kz = np.fft.fftfreq(volume.shape[0])[:, None, None]
    kx = np.fft.rfftfreq(volume.shape[2])[None, None, :]
    measured = np.abs(kz) <= np.abs(kx) * np.tan(np.radians(max_tilt_deg))
    measured[0, 0, 0] = True
    spectrum = np.fft.rfftn(volume) * np.broadcast_to(measured, (volume.shape[0], volume.shape[1], kx.shape[2]))
    return np.fft.irfftn(spectrum, s=volume.shape).astype(np.float32)


def simulate_tomogram(
    shape: tuple[int, int, int] = (64, 64, 64),
    *,
    voxel_size: float = 20.0,
    vesicles: int = 2,
    particles: int = 6,
    sheet: bool = True,
    snr: float = 2.0,
    max_tilt_deg: float = 60.0,
    seed: int = 0,
) -> SimulatedTomogram:
    """A tomogram of ``shape`` (ZYX) at ``voxel_size`` Angstrom with membranes, particles, wedge and noise."""
    rng = np.random.default_rng(seed)
    voxel_nm = voxel_size / 10.0
    labels = np.zeros(shape, np.uint8)
    density = np.zeros(shape, np.float32)
    objects: list[dict] = []
    shells = [_vesicle(shape, rng, voxel_nm, 4.0) for _ in range(vesicles)]
    if sheet:
        shells.append(_sheet(shape, rng, voxel_nm, 4.5))
    for mask, meta in shells:
        labels[mask] = 1
        density[mask] = 1.0
        objects.append(meta)
    # lumpy particle interiors: RNA-dense patches
    texture = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), 1.0)
    texture /= max(float(texture.std()), 1e-6)
    taken = ndimage.binary_dilation(labels > 0, iterations=2)
    for _ in range(particles):
        placed = _particle(shape, rng, voxel_nm, taken)
        if placed is None:
            continue
        mask, meta = placed
        labels[mask] = 2
        taken |= ndimage.binary_dilation(mask, iterations=2)
        density[mask] = 1.1 + 0.2 * texture[mask]
        objects.append(meta)
    # phase contrast: dense matter is dark; the CTF envelope blurs it; the wedge elongates it along Z
    image = -ndimage.gaussian_filter(density, 0.8)
    image = missing_wedge(image, max_tilt_deg)
    signal = float(image.std()) or 1.0
    noise = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), 0.6)
    noise *= signal / (float(noise.std()) * np.sqrt(snr))
    # slowly varying ice thickness
    z, y, x = _grid(shape)
    ice = 0.2 * signal * np.cos(2 * np.pi * (y / shape[1] * rng.uniform(0.3, 0.8) + x / shape[2] * 0.3))
    volume = (image + noise + ice).astype(np.float32)
    return SimulatedTomogram(volume, labels, voxel_size, objects)


def labels_path(tomogram: Path) -> Path:
    """Where the true labels of ``tomogram`` live: ``<stem>_labels.mrc`` beside it."""
    tomogram = Path(tomogram)
    return tomogram.with_name(f"{tomogram.stem}_labels.mrc")


def write_simulated(
    out: Path, sim: SimulatedTomogram, *, origin_xyz: tuple[float, float, float] = (0.0, 0.0, 0.0)
) -> tuple[Path, Path]:
    """Write ``out`` (the tomogram), ``<stem>_labels.mrc`` and ``<stem>_labels.json`` (names, objects)."""
    out = Path(out)
    voxel = (sim.voxel_size,) * 3
    names = " ".join(f"{k}={v}" for k, v in sim.label_names.items())
    write_mrc(
        out,
        sim.volume,
        voxel_size_zyx=voxel,
        origin_xyz=origin_xyz,
        labels=["labpipe simulated tomogram (missing wedge +-60 deg about Y)"],
    )
    labels = labels_path(out)
    write_mrc(
        labels,
        sim.labels.astype(np.int8),
        voxel_size_zyx=voxel,
        origin_xyz=origin_xyz,
        labels=[f"labpipe labels: {names}"],
    )
    meta = {
        "labels": {str(k): v for k, v in sim.label_names.items()},
        "voxel_size": sim.voxel_size,
        "objects": sim.objects,
        "shape_zyx": list(sim.volume.shape),
    }
    atomic_write_text(labels.with_suffix(".json"), json.dumps(meta, indent=1))
    return out, labels


def as_json(sim: SimulatedTomogram) -> dict:
    counts = np.bincount(sim.labels.ravel(), minlength=len(sim.label_names))
    return {
        "shape_zyx": list(sim.volume.shape),
        "voxel_size": sim.voxel_size,
        "label_voxels": {sim.label_names[i]: int(c) for i, c in enumerate(counts)},
        "objects": sim.objects,
    }


def simulate_training_set(
    folder: Path, *, count: int = 4, shape: tuple[int, int, int] = (48, 48, 48), voxel_size: float = 20.0, seed: int = 0
) -> list[tuple[Path, Path]]:
    """``count`` labelled tomograms ``case_NNN.mrc`` (+ ``_labels.mrc``) in ``folder``; existing ones are kept."""
    pairs = []
    for index in range(count):
        out = Path(folder) / f"case_{index:03d}.mrc"
        if not (out.exists() and labels_path(out).exists()):
            write_simulated(out, simulate_tomogram(shape, voxel_size=voxel_size, seed=seed + index))
        pairs.append((out, labels_path(out)))
    return pairs
