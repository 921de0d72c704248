"""MRC validation: good tomograms give their metadata; corrupt, truncated and odd ones are named and refused."""

from __future__ import annotations

import json
import tracemalloc

import mrcfile
import numpy as np
import pytest
from labpipe.cli.seg import app
from labpipe.errors import InvalidInput
from labpipe.seg import mrc as mrc_module
from labpipe.seg.mrc import read_header, validate_tomogram, write_mrc
from typer.testing import CliRunner


@pytest.fixture
def volume():
    rng = np.random.default_rng(0)
    return rng.normal(3.0, 2.0, (20, 30, 40)).astype(np.float32)


@pytest.fixture
def good(tmp_path, volume):
    return write_mrc(tmp_path / "good.mrc", volume, voxel_size_zyx=(12.0, 10.0, 10.0), origin_xyz=(5.0, -7.5, 100.0))


def test_metadata_of_a_good_tomogram(good, volume):
    info = validate_tomogram(good)
    assert info.shape_zyx == (20, 30, 40)
    assert info.voxel_size_zyx == pytest.approx((12.0, 10.0, 10.0))
    assert info.origin_xyz == pytest.approx((5.0, -7.5, 100.0))
    assert info.dtype == "float32" and info.mode == 2
    assert info.min == pytest.approx(float(volume.min()))
    assert info.max == pytest.approx(float(volume.max()))
    assert info.mean == pytest.approx(float(volume.astype(np.float64).mean()), rel=1e-9)
    assert info.std == pytest.approx(float(volume.astype(np.float64).std()), rel=1e-9)
    assert info.warnings == []


def test_stats_are_read_in_slabs_not_whole(tmp_path, monkeypatch):
    data = np.arange(64 * 128 * 128, dtype=np.float32).reshape(64, 128, 128)  # 4 MiB
    path = write_mrc(tmp_path / "big.mrc", data, voxel_size_zyx=(1.0, 1.0, 1.0))
    monkeypatch.setattr(mrc_module, "SLAB_BYTES", 128 << 10)
    tracemalloc.start()
    info = validate_tomogram(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert info.mean == pytest.approx(float(data.astype(np.float64).mean()))
    assert peak < data.nbytes / 4, f"validation allocated {peak} bytes for a {data.nbytes}-byte volume"


def _raw(path):
    return bytearray(path.read_bytes())


def test_truncated_file_is_refused_with_the_missing_byte_count(good, tmp_path):
    bad = tmp_path / "truncated.mrc"
    bad.write_bytes(_raw(good)[:-4000])
    with pytest.raises(InvalidInput, match="truncated.*4000 missing") as caught:
        validate_tomogram(bad)
    assert str(bad) in str(caught.value)


def test_extra_bytes_after_the_data_are_refused(good, tmp_path):
    bad = tmp_path / "long.mrc"
    bad.write_bytes(bytes(_raw(good)) + b"\0" * 100)
    with pytest.raises(InvalidInput, match="100 unexpected bytes"):
        validate_tomogram(bad)


def test_not_an_mrc_file(tmp_path):
    junk = tmp_path / "junk.mrc"
    junk.write_bytes(b"this is a text file, not a map\n" * 100)
    with pytest.raises(InvalidInput, match="no 'MAP ' identifier"):
        validate_tomogram(junk)
    tiny = tmp_path / "tiny.mrc"
    tiny.write_bytes(b"MAP ")
    with pytest.raises(InvalidInput, match="shorter than the 1024-byte MRC header"):
        validate_tomogram(tiny)
    with pytest.raises(InvalidInput, match="no such file"):
        validate_tomogram(tmp_path / "absent.mrc")


def _edit_header(path, **fields):
    with mrcfile.open(path, mode="r+", permissive=True) as m:
        for name, value in fields.items():
            setattr(m.header, name, value)


def test_header_problems_are_named(good):
    _edit_header(good, mapc=2, mapr=1)
    with pytest.raises(InvalidInput, match=r"axis order .* = \(2, 1, 3\)"):
        read_header(good)
    _edit_header(good, mapc=1, mapr=2, ispg=401)
    with pytest.raises(InvalidInput, match="stack of volumes"):
        read_header(good)
    _edit_header(good, ispg=1, mode=4)
    with pytest.raises(InvalidInput, match="mode 4 .*Fourier"):
        read_header(good)


def test_missing_voxel_size_needs_an_override(tmp_path, volume):
    path = write_mrc(tmp_path / "novoxel.mrc", volume, voxel_size_zyx=(1.0, 1.0, 1.0))
    with mrcfile.open(path, mode="r+") as m:
        m.voxel_size = 0.0
    with pytest.raises(InvalidInput, match="--voxel-size"):
        read_header(path)
    assert read_header(path, voxel_size=13.5).voxel_size_zyx == (13.5, 13.5, 13.5)


def test_a_single_image_is_not_a_tomogram(tmp_path):
    path = write_mrc(tmp_path / "image.mrc", np.ones((1, 8, 8), np.float32), voxel_size_zyx=(1.0, 1.0, 1.0))
    with pytest.raises(InvalidInput, match="single 2-D image"):
        read_header(path)


def test_non_finite_voxels_are_located(tmp_path, volume):
    volume[7, 3, 9] = np.nan
    path = write_mrc(tmp_path / "nan.mrc", volume, voxel_size_zyx=(1.0, 1.0, 1.0))
    with pytest.raises(InvalidInput, match=r"1 non-finite voxels .* z,y,x = 7,3,9"):
        validate_tomogram(path)


def test_integer_modes_are_accepted(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    info = validate_tomogram(write_mrc(tmp_path / "int16.mrc", data, voxel_size_zyx=(2.0, 2.0, 2.0)))
    assert (info.dtype, info.min, info.max) == ("int16", 0.0, float(data.max()))


def test_cli_prints_json_and_fails_on_corrupt_files(good, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["validate", str(good)])
    assert result.exit_code == 0, result.output
    metadata = json.loads(result.stdout)
    assert metadata["shape_zyx"] == [20, 30, 40] and metadata["voxel_size_unit"] == "Angstrom"
    bad = tmp_path / "cut.mrc"
    bad.write_bytes(_raw(good)[:2000])
    result = runner.invoke(app, ["validate", str(bad)])
    assert result.exit_code == 2
    assert "truncated" in result.output and str(bad) in result.output


@pytest.mark.parametrize("cut", [1, 4097, 7001])  # ranges that split the header and voxels at odd bytes
def test_the_stream_validator_gives_what_validate_tomogram_gives(tmp_path, volume, cut):
    """The upload service validates the bytes as they arrive: same metadata as reading the file afterwards."""
    from labpipe.seg.mrc import StreamValidator

    volume[:3] = 0  # a nonzero box smaller than the volume
    volume[:, :, 35:] = 0
    path = write_mrc(tmp_path / "v.mrc", volume, voxel_size_zyx=(12.0, 10.0, 10.0))
    data = path.read_bytes()
    stream = StreamValidator(path)
    for offset in range(0, len(data), cut):
        stream.feed(offset, data[offset : offset + cut])
    streamed, whole = stream.finish().as_json(), validate_tomogram(path).as_json()
    assert streamed["nonzero_box_zyx"] == whole["nonzero_box_zyx"] == [[3, 20], [0, 30], [0, 35]]
    for key in ("mean", "std"):
        assert streamed.pop(key) == pytest.approx(whole.pop(key), rel=1e-12)
    assert streamed == whole


def test_the_stream_validator_locates_non_finite_voxels_and_bad_headers(tmp_path, volume):
    from labpipe.seg.mrc import StreamValidator

    volume[7, 3, 9] = np.inf
    path = write_mrc(tmp_path / "inf.mrc", volume, voxel_size_zyx=(1.0, 1.0, 1.0))
    stream = StreamValidator(path)
    data = path.read_bytes()
    stream.feed(0, data[:5000])
    stream.feed(5000, data[5000:])
    with pytest.raises(InvalidInput, match=r"1 non-finite voxels .* z,y,x = 7,3,9"):
        stream.finish()
    with mrcfile.open(path, mode="r+", permissive=True) as m:
        m.header.mode = 4
    stream = StreamValidator(path)
    stream.feed(0, path.read_bytes())
    with pytest.raises(InvalidInput, match="mode 4"):
        stream.finish()
