import numpy as np
import pytest
from labpipe.errors import InvalidInput
from labpipe.ingest.mocap import read_motive_csv
from labpipe.ingest.simulate import write_motive_csv


def test_reads_markers_frames_and_occlusions(tmp_path):
    path = tmp_path / "take.csv"
    write_motive_csv(path, np.random.default_rng(1), frames=50, markers=4)
    rec = read_motive_csv(path)
    assert rec.frame_rate == 120.0
    assert rec.markers == [f"Rat:Marker{i}" for i in range(1, 5)]
    assert rec.trajectories.shape == (50, 4, 3)
    row = rec.row()
    assert 0 < row["missing_fraction"] < 0.3  # about 2% of samples are left empty, per coordinate


def test_values_round_trip(tmp_path):
    path = tmp_path / "take.csv"
    write_motive_csv(path, np.random.default_rng(2), frames=5, markers=1)
    first = path.read_text().splitlines()[7].split(",")
    rec = read_motive_csv(path)
    expected = [float(v) if v else np.nan for v in first[2:5]]
    np.testing.assert_allclose(rec.trajectories[0, 0], expected, rtol=1e-5)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("time,value\n1,2\n", "not a Motive .csv export"),
        ("Format Version,1.23,Export Frame Rate,abc\n", "no numeric 'Export Frame Rate'"),
        ("Format Version,1.23,Export Frame Rate,120\nName,,a,a,a\n", "no 'Frame,Time (Seconds)' header"),
        (
            "Format Version,1.23,Export Frame Rate,120\nName,,a,a,a\nFrame,Time (Seconds),X,Y,Z\n0,0,1,2,oops\n",
            "line 4: non-numeric",
        ),
    ],
)
def test_malformed_exports_are_named(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(InvalidInput, match="bad.csv") as caught:
        read_motive_csv(path)
    assert message in str(caught.value)
