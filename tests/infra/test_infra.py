"""infra/ parses, and README's "Running in the lab" section matches it."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
UNITS = sorted((ROOT / "infra" / "systemd").glob("*.service"))


def _lab_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Running in the lab")
    end = text.find("\n## ", start + 5)
    return text[start : end if end > 0 else None]


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed here")
@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_units_verify(unit, tmp_path):
    """systemd-analyze verify, with /opt/labpipe pointing at this checkout so the programs exist."""
    text = unit.read_text().replace("/opt/labpipe", str(ROOT))
    text = text.replace("User=labpipe", "User=root").replace("Group=labpipe", "Group=root")
    name = unit.name.replace("@.service", "@cpu.service")
    (tmp_path / unit.name).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / name)], capture_output=True, text=True, cwd=tmp_path
    )
    problems = [line for line in result.stderr.splitlines() if unit.name.split("@")[0] in line]
    assert result.returncode == 0 and not problems, result.stderr


def test_units_read_the_shared_environment_file():
    for unit in UNITS:
        assert "EnvironmentFile=/etc/labpipe/labpipe.env" in unit.read_text(), unit.name
    env = (ROOT / "infra" / "labpipe.env.example").read_text() + (ROOT / "infra" / "host.env.example").read_text()
    for name in (
        "LABPIPE_DATABASE_URL",
        "PREFECT_API_URL",
        "PREFECT_SERVER_DATABASE_CONNECTION_URL",
        "DASK_SCHEDULER_ADDRESS",
    ):
        assert re.search(rf"^{name}(_FILE)?=", env, re.M), name  # secrets as NAME_FILE (docs/lab.md)
    assert not re.search(r"\b172\.2[56]\.", env), "lab IPs belong in the deployed env file, not the repository"


def test_compose_file_defines_server_and_postgres():
    compose = yaml.safe_load((ROOT / "infra" / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "prefect-server"}
    assert "pg_trgm" in (ROOT / "infra" / "postgres-init.sql").read_text()
    assert "3.8.8" in services["prefect-server"]["image"]
    assert services["prefect-server"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_readme_lab_section_names_every_unit_and_its_hosts():
    section = _lab_section()
    named = set(re.findall(r"infra/systemd/([\w@.-]+\.service)", section))
    assert named == {u.name for u in UNITS}
    for pool, host in (("cpu", "MAIN_SERVER"), ("gpu", "GPU_SERVER"), ("backup", "BACKUP_SERVER")):
        assert re.search(rf"labpipe-worker@{pool}\b.*{host}|{host}.*labpipe-worker@{pool}\b", section), pool
    assert "infra/compose.yaml" in section and "infra/labpipe.env.example" in section
