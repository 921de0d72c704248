"""Simulated tomograms and their truth; artifacts aligned with the input; statistics against independent counts."""

from __future__ import annotations

import json
import math

import mrcfile
import nibabel
import nrrd
import numpy as np
import pytest
from labpipe.seg import artifacts as artifacts_module
from labpipe.seg.artifacts import label_statistics, surface_area, voxel0_position, write_artifacts
from labpipe.seg.mrc import read_header, validate_tomogram
from labpipe.seg.simulate import LABELS, labels_path, missing_wedge, simulate_tomogram, write_simulated
from skimage import measure


@pytest.fixture(scope="module")
def sim():
    return simulate_tomogram((40, 56, 64), voxel_size=20.0, seed=5)


def test_simulated_tomogram_has_membranes_and_particles(sim):
    counts = np.bincount(sim.labels.ravel(), minlength=3)
    assert counts[1] > 0.02 * sim.labels.size and counts[2] > 0.002 * sim.labels.size
    assert {o["kind"] for o in sim.objects} >= {"vesicle", "membrane sheet", "particle"}
    # dense matter is dark (phase contrast): labelled voxels are darker than background on average
    assert sim.volume[sim.labels > 0].mean() < sim.volume[sim.labels == 0].mean()
    # membranes are thin shells: most membrane voxels touch background
    from scipy import ndimage

    interior = ndimage.binary_erosion(sim.labels == 1, iterations=2)
    assert interior.sum() < 0.05 * (sim.labels == 1).sum()
    again = simulate_tomogram((40, 56, 64), voxel_size=20.0, seed=5)
    assert np.array_equal(again.labels, sim.labels) and np.array_equal(again.volume, sim.volume)


def test_missing_wedge_removes_the_unmeasured_frequencies():
    rng = np.random.default_rng(1)
    volume = rng.normal(size=(32, 16, 32)).astype(np.float32)
    spectrum = np.abs(np.fft.rfftn(missing_wedge(volume, 60.0)))
    kz = np.abs(np.fft.fftfreq(32))[:, None, None]
    kx = np.abs(np.fft.rfftfreq(32))[None, None, :]
    wedge = np.broadcast_to(kz > kx * math.tan(math.radians(60.0)) + 1e-9, spectrum.shape)
    assert spectrum[wedge].max() < 1e-3 * spectrum[~wedge].max()


def test_written_simulation_is_aligned_and_described(sim, tmp_path):
    image, labels = write_simulated(tmp_path / "t.mrc", sim, origin_xyz=(10.0, 20.0, 30.0))
    assert labels == labels_path(image)
    a, b = read_header(image), read_header(labels)
    assert a.shape_zyx == b.shape_zyx == sim.volume.shape
    assert a.voxel_size_zyx == b.voxel_size_zyx == (20.0, 20.0, 20.0)
    assert a.origin_xyz == b.origin_xyz == (10.0, 20.0, 30.0)
    assert np.array_equal(mrcfile.read(labels), sim.labels.astype(np.int8))
    meta = json.loads(labels.with_suffix(".json").read_text())
    assert meta["labels"] == {str(k): v for k, v in LABELS.items()}


def test_statistics_match_an_independent_count(sim):
    stats = label_statistics(sim.labels, (20.0, 20.0, 20.0), LABELS)
    counts = np.bincount(sim.labels.ravel(), minlength=3)
    for value, name in LABELS.items():
        assert stats[name]["voxels"] == counts[value]
        assert stats[name]["volume_nm3"] == pytest.approx(counts[value] * 2.0**3)
    assert stats["background"]["surface_area_nm2"] is None
    # the mesh of the whole padded volume, in one piece, gives the same area as the slabbed computation
    whole = np.pad((sim.labels == 2).astype(np.float32), 1)
    verts, faces, _, _ = measure.marching_cubes(whole, 0.5, spacing=(2.0, 2.0, 2.0))
    assert stats["particle"]["surface_area_nm2"] == pytest.approx(measure.mesh_surface_area(verts, faces), rel=1e-9)


def test_sphere_area_and_volume_in_physical_units(monkeypatch):
    monkeypatch.setattr(artifacts_module, "STATS_SLAB_BYTES", 4000)  # many slabs of a few planes each
    z, y, x = np.ogrid[:48, :48, :48]
    radius = 15.0
    ball = ((z - 23.5) ** 2 + (y - 23.5) ** 2 + (x - 23.5) ** 2 <= radius**2).astype(np.uint8)
    spacing_a = (8.0, 8.0, 8.0)  # 0.8 nm voxels
    stats = label_statistics(ball, spacing_a, {0: "background", 1: "ball"})["ball"]
    r_nm = radius * 0.8
    assert stats["volume_nm3"] == pytest.approx(4 / 3 * math.pi * r_nm**3, rel=0.03)
    # marching cubes on a binary mask follows the voxel staircase: +9.8% on this sphere (measured), never less
    assert 1.0 < stats["surface_area_nm2"] / (4 * math.pi * r_nm**2) < 1.12
    one_piece = surface_area(lambda zs: ball[zs] == 1, ball.shape, (0.8, 0.8, 0.8))
    assert stats["surface_area_nm2"] == pytest.approx(one_piece, rel=1e-9)


def test_artifacts_are_readable_and_aligned_with_the_input(sim, tmp_path):
    image, _ = write_simulated(tmp_path / "in.mrc", sim, origin_xyz=(-40.0, 120.0, 8.0))
    info = validate_tomogram(image)
    stats = write_artifacts(tmp_path / "out", sim.labels, info, LABELS, {"run": "r"})
    with mrcfile.open(tmp_path / "out" / "mask.mrc") as m:
        assert m.data.shape == info.shape_zyx
        assert np.array_equal(m.data.astype(np.uint8), sim.labels)
        assert (float(m.voxel_size.x), float(m.voxel_size.z)) == (20.0, 20.0)
        assert (float(m.header.origin.x), float(m.header.origin.y), float(m.header.origin.z)) == (-40.0, 120.0, 8.0)
    nifti = nibabel.load(tmp_path / "out" / "mask.nii.gz")
    assert np.array_equal(np.asarray(nifti.dataobj).transpose(2, 1, 0), sim.labels)
    assert np.allclose(nifti.header.get_zooms(), (20.0, 20.0, 20.0))
    assert np.allclose(nifti.affine[:3, 3], voxel0_position(info)) and voxel0_position(info) == (-40.0, 120.0, 8.0)
    data, header = nrrd.read(str(tmp_path / "out" / "mask.nrrd"), index_order="C")
    assert np.array_equal(data, sim.labels)
    assert np.allclose(np.diag(header["space directions"]), (20.0, 20.0, 20.0))
    assert np.allclose(header["space origin"], (-40.0, 120.0, 8.0))
    on_disk = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert on_disk == json.loads(json.dumps(stats))
    assert on_disk["labels"]["membrane"]["voxels"] == int((sim.labels == 1).sum())
    assert on_disk["origin_xyz_angstrom"] == [-40.0, 120.0, 8.0]
