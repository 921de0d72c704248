"""The radio products API and page over a month of science on simulated images: real database, real server.

Thirty daily images of one field (a variable and an ESE-like dip among steady sources) go through
``calrun.image_science`` exactly as the radio-image flow runs it; the API then serves what was recorded,
read-only and only with the token; headless Chromium renders the page (a screenshot is kept).
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.time import Time
from fastapi.testclient import TestClient
from labpipe.errors import ConfigError
from labpipe.radio import calregistry, calrun, catalogue, products, simulate
from labpipe.radio.api import ApiConfig, create_app, directory_stats, write_token

RA0, DEC0 = 150.0, 55.0
EPOCHS = 60000.25 + np.arange(30)


def _sky():
    rng = np.random.default_rng(11)
    positions = [(x, y) for x in (-0.75, -0.25, 0.25, 0.75) for y in (-0.6, 0.0, 0.6)] + [(-0.5, 0.3), (0.5, -0.3)]
    sources = []
    for k, (x, y) in enumerate(positions):
        ra = RA0 + x / math.cos(math.radians(DEC0 + y))
        if k == len(positions) - 2:
            curve = simulate.variable_lightcurve(EPOCHS, modulation=0.3, seed=5)
            sources.append(simulate.Source("variable", ra, DEC0 + y, 0.1, lightcurve=curve))
        elif k == len(positions) - 1:
            curve = simulate.ese_lightcurve(EPOCHS, centre_mjd=EPOCHS[15], fwhm_days=5.0, depth=0.4)
            sources.append(simulate.Source("ese", ra, DEC0 + y, 0.1, lightcurve=curve))
        else:
            sources.append(simulate.Source(f"steady{k}", ra, DEC0 + y, float(10 ** rng.uniform(-1.7, -0.5))))
    return sources


def _identity(db, source) -> int:
    masters = catalogue.master_sources(db)
    pos = np.array([(m["ra_deg"], m["dec_deg"]) for m in masters])
    sep = np.hypot((pos[:, 0] - source.ra_deg) * math.cos(math.radians(source.dec_deg)), pos[:, 1] - source.dec_deg)
    return int(masters[int(np.argmin(sep))]["source_id"])


@pytest.fixture
def month(lab_db, tmp_path):
    """The radio tree and database after 30 imaged epochs went through the science step; a calibration table."""
    import matplotlib.pyplot as plt

    root = tmp_path / "radio"
    sky = _sky()
    settings = calrun.RadioCalSettings()
    for k, mjd in enumerate(EPOCHS):
        group = Time(mjd, format="mjd").isot[:19]
        image = simulate.simulate_image(calrun.image_prefix(root, group), sky, ra0_deg=RA0, dec0_deg=DEC0, mjd=mjd,
                                        seed=k)  # fmt: skip
        for kind, path in image.paths.items():
            detail = {"ra_deg": RA0, "dec_deg": DEC0} if kind == "image.pbcor" else None
            products.record_product(lab_db, "image", path, start_mjd=mjd, end_mjd=mjd + 0.0035, group_id=group,
                                    subtype=kind, detail=detail)  # fmt: skip
        if k == len(EPOCHS) - 1:  # a QA picture and its metrics, as the imaging step writes them
            png = calrun.qa_dir(root, group) / f"{group}.qa.png"
            png.parent.mkdir(parents=True, exist_ok=True)
            fig, ax = plt.subplots(figsize=(4, 3))
            ax.plot([0, 1], [0, 1])
            fig.savefig(png)
            plt.close(fig)
            products.record_product(lab_db, "qa", png, start_mjd=mjd, end_mjd=mjd, group_id=group, subtype="png")
            metrics = png.with_name(f"{group}.metrics.json")
            metrics.write_text("{}")
            products.record_product(lab_db, "qa", metrics, start_mjd=mjd, end_mjd=mjd, group_id=group,
                                    subtype="metrics", detail={"rms_jy": 1e-3, "dynamic_range": 400,
                                                               "n_sources": 14, "passed": True})  # fmt: skip
        calrun.image_science(lab_db, root, group, settings)
    mosaics = calrun.night_mosaics(lab_db, root, Time(EPOCHS[0], format="mjd").datetime.date())
    assert len(mosaics) == 1
    calregistry.begin_registration(lab_db, dict(
        table_name="2023-02-25T06:00:00_24h.bpcal", kind="BP", cadence="24h", path=str(root / "x.bpcal"),
        ms_path=str(root / "x.ms"), solve_mjd=60000.25, valid_start_mjd=59999.75, valid_end_mjd=60001.25,
        flagged_fraction=0.01, median_snr=80.0, phase_scatter_deg=1.5,
    ))  # fmt: skip
    calregistry.finish_registration(lab_db, "2023-02-25T06:00:00_24h.bpcal", True, "")
    token_file = tmp_path / "secrets" / "api-token"
    token = write_token(token_file)
    return root, sky, token, ApiConfig(radio_root=root, token_file=token_file)


@pytest.mark.slow
def test_products_api_serves_the_month_only_with_the_token(lab_db, month, tmp_path):
    root, sky, token, config = month
    client = TestClient(create_app(lab_db, config))
    auth = {"Authorization": f"Bearer {token}"}

    assert client.get("/health").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "labpipe radio products" in page.text and "steady" not in page.text
    for path in ("/api/sources", "/api/images", "/api/candidates", "/api/calibration", "/api/stats", "/api/qa"):
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers={"Authorization": "Bearer wrong-token-wrong-token"}).status_code == 401
    assert client.post("/api/sources", headers=auth).status_code == 405  # read-only

    sources = client.get("/api/sources", headers=auth).json()
    assert len(sources) == len(sky)
    variable, ese = _identity(lab_db, sky[-2]), _identity(lab_db, sky[-1])
    candidates = client.get("/api/candidates", headers=auth).json()
    assert [c["source_id"] for c in candidates["ese_candidate"]] == [ese]
    assert variable in [c["source_id"] for c in candidates["variable"]]
    assert {c["source_id"] for c in candidates["variable"]} <= {variable, ese}  # no steady source flagged

    curve = client.get(f"/api/sources/{ese}/lightcurve", headers=auth).json()
    assert len(curve["mjd"]) == len(EPOCHS)
    png = client.get(f"/api/sources/{ese}/lightcurve.png", headers=auth)
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert client.get("/api/sources/99999/lightcurve", headers=auth).status_code == 404

    # the flow's science step recorded the source lists and the candidates' light-curve plots as products
    kinds = {p["kind"] for p in products.products(lab_db)}
    assert {"catalogue", "lightcurve"} <= kinds
    plotted = {p["detail"]["source_id"] for p in products.products(lab_db, kind="lightcurve")}
    assert {variable, ese} <= plotted
    assert len(client.get("/api/catalogues", headers=auth).json()) == len(EPOCHS)
    images = client.get("/api/images", headers=auth).json()
    assert len(images) == len(EPOCHS) and images[0]["start_mjd"] > images[-1]["start_mjd"]  # newest first
    (mosaic,) = client.get("/api/mosaics", headers=auth).json()
    assert mosaic["detail"]["n_images"] == 1 and Path(mosaic["path"]).is_file()
    (cal,) = client.get("/api/calibration", headers=auth).json()
    assert cal["status"] == "active" and cal["kind"] == "BP"

    stats = {d["directory"]: d for d in client.get("/api/stats", headers=auth).json()["directories"]}
    on_disk = [p for p in (root / "images").rglob("*") if p.is_file()]
    assert stats["images"]["files"] == len(on_disk)
    assert stats["images"]["bytes"] == sum(p.stat().st_size for p in on_disk)
    assert stats["images"]["growth_bytes_per_day"] == pytest.approx(stats["images"]["bytes"] / 7)
    assert stats["images/single"]["oldest"] <= stats["images/single"]["newest"]

    qa_png = [p for p in products.products(lab_db, kind="qa") if p["subtype"] == "png"][0]
    served = client.get(f"/api/products/{qa_png['product_id']}/file", headers=auth)
    assert served.status_code == 200 and served.content == Path(qa_png["path"]).read_bytes()
    outside = tmp_path / "outside.txt"
    outside.write_text("not for the API")
    foreign = products.record_product(lab_db, "qa", outside, start_mjd=60000.0, end_mjd=60000.0, subtype="txt")
    assert client.get(f"/api/products/{foreign}/file", headers=auth).status_code == 403
    assert client.get("/api/products/..%2F..%2Fetc/file", headers=auth).status_code in (404, 422)


def test_paths_and_token_are_validated_at_start(lab_db, tmp_path):
    token_file = tmp_path / "token"
    write_token(token_file)
    assert token_file.stat().st_mode & 0o777 == 0o600
    with pytest.raises(ConfigError, match="is not a directory"):
        create_app(lab_db, ApiConfig(radio_root=tmp_path / "nope", token_file=token_file))
    (tmp_path / "radio").mkdir()
    token_file.chmod(0o644)
    with pytest.raises(ConfigError, match="0o644"):
        create_app(lab_db, ApiConfig(radio_root=tmp_path / "radio", token_file=token_file))
    token_file.chmod(0o600)
    token_file.write_text("short\n")
    with pytest.raises(ConfigError, match="16 characters"):
        create_app(lab_db, ApiConfig(radio_root=tmp_path / "radio", token_file=token_file))
    with pytest.raises(ConfigError, match="does not exist"):
        create_app(lab_db, ApiConfig(radio_root=tmp_path / "radio", token_file=tmp_path / "missing"))


def test_directory_stats_count_every_file_once_and_skip_links(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "one").write_bytes(b"x" * 10)
    (tmp_path / "a" / "b" / "two").write_bytes(b"x" * 5)
    (tmp_path / "a" / "link").symlink_to(tmp_path / "a" / "one")
    old = time.time() - 30 * 86400
    os.utime(tmp_path / "a" / "b" / "two", (old, old))
    rows = {r["directory"]: r for r in directory_stats(tmp_path, depth=2, growth_window_days=10)}
    assert (rows["."]["files"], rows["."]["bytes"]) == (2, 15)
    assert (rows["a/b"]["files"], rows["a/b"]["bytes"]) == (1, 5)
    assert rows["a"]["growth_bytes_per_day"] == pytest.approx(1.0)  # only 'one' changed in the window
    assert rows["a"]["oldest"] == rows["a/b"]["oldest"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("chromium"), reason="Debian chromium is not installed")
def test_the_page_in_headless_chromium_shows_the_candidates(lab_db, month, tmp_path):
    import uvicorn

    root, sky, token, config = month
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(lab_db, config), host="127.0.0.1", port=port,
                                           log_level="warning"))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.1)
        url = f"http://127.0.0.1:{port}/#token={token}"
        common = ["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                  f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=20000"]  # fmt: skip
        dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=120)
        assert 'data-loaded="yes"' in dom.stdout, dom.stderr[-2000:]
        ese = _identity(lab_db, sky[-1])
        assert f"source {ese}</b>: ESE candidate" in dom.stdout
        assert "blob:" in dom.stdout  # the light-curve plots were fetched with the token and shown
        shot = tmp_path / "radio-products-page.png"
        subprocess.run([*common, "--window-size=1400,2600", f"--screenshot={shot}", url], capture_output=True,
                       timeout=120, check=True)  # fmt: skip
        assert shot.stat().st_size > 50_000
        keep = os.environ.get("LABPIPE_KEEP_SCREENSHOT")
        if keep:
            shutil.copy(shot, keep)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
