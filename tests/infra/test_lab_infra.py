"""The lab's infra files are safe by default: TLS and auth, secrets only in files, nothing on a wildcard address."""

import re
from pathlib import Path

import yaml
from labpipe.lab.secretenv import SECRET_VARIABLES

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
UNITS = {p.name: p.read_text() for p in sorted((INFRA / "systemd").glob("*.service"))}
ENV_EXAMPLES = [INFRA / "labpipe.env.example", INFRA / "host.env.example"]


def _exec_start(unit: str) -> str:
    return next(line for line in UNITS[unit].splitlines() if line.startswith("ExecStart="))


def test_no_unit_listens_on_a_wildcard_address():
    for name, text in UNITS.items():
        start = _exec_start(name)
        assert "0.0.0.0" not in start and "--dashboard-address :" not in start, name
        assert "EnvironmentFile=/etc/labpipe/host.env" in text, name  # where this host's address comes from
    assert "--host ${LABPIPE_HOST_ADDRESS}" in _exec_start("labpipe-dask-scheduler.service")
    assert "--dashboard-address 127.0.0.1:8787" in _exec_start("labpipe-dask-scheduler.service")
    assert "--dashboard-address 127.0.0.1:0" in _exec_start("labpipe-dask-worker.service")
    assert "--address ${LABPIPE_HOST_ADDRESS}" in _exec_start("labpipe-diskwatch.service")


def test_the_prefect_server_serves_tls_and_its_clients_carry_the_auth_string():
    server = _exec_start("labpipe-prefect-server.service")
    assert "--ssl-certfile ${LABPIPE_TLS_CERT}" in server and "--ssl-keyfile ${LABPIPE_TLS_KEY}" in server
    assert "--host ${PREFECT_SERVER_API_HOST}" in server
    for unit in ("labpipe-prefect-server.service", "labpipe-worker@.service"):
        assert "-m labpipe.lab.secretenv " in _exec_start(unit), unit  # secrets from their files
    env = "\n".join(p.read_text() for p in ENV_EXAMPLES)
    assert re.search(r"^PREFECT_API_URL=https://", env, re.M)
    assert re.search(r"^LABPIPE_DASK_ADDRESS=tls://", env, re.M)
    assert re.search(r"^DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION=True$", env, re.M)
    assert re.search(r"^PREFECT_API_AUTH_STRING_FILE=", env, re.M)
    assert re.search(r"^PREFECT_SERVER_API_AUTH_STRING_FILE=", env, re.M)


def test_secrets_are_only_named_never_written_in_the_env_files():
    for example in ENV_EXAMPLES:
        settings = "\n".join(line for line in example.read_text().splitlines() if not line.startswith("#"))
        for name in SECRET_VARIABLES:
            assert not re.search(rf"^{name}=", settings, re.M), f"{example.name}: {name} in clear"
        assert not re.search(r"://[^/\s:@]+:[^@\s]+@", settings), f"{example.name}: a password in a URL"


def test_compose_publishes_nothing_on_all_interfaces_and_keeps_secrets_in_files():
    compose = yaml.safe_load((INFRA / "compose.yaml").read_text())
    for name, service in compose["services"].items():
        for mapping in service.get("ports", []):
            host_part = str(mapping).rsplit(":", 2)
            assert len(host_part) == 3 and host_part[0] not in {"", "0.0.0.0", "::"}, f"{name}: {mapping}"
        for key, value in service.get("environment", {}).items():
            assert "PASSWORD" not in key or key.endswith("_FILE"), f"{name}: {key}"
            assert not re.search(r"://[^/\s:@]+:[^@\s]+@", str(value)), f"{name}: {key}"
    assert compose["services"]["postgres"]["ports"] == ["127.0.0.1:5432:5432"]
    server = compose["services"]["prefect-server"]
    assert "--ssl-certfile" in " ".join(server["command"]) and "PREFECT_SERVER_API_AUTH_STRING=" in server["command"][2]


def test_the_simulated_labs_system_packages_are_listed_for_ci():
    listed = {}
    for line in (INFRA / "apt-packages.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            package, roles = line.split()[:2]
            listed[package] = roles
    for package in ("openssh-server", "postgresql", "iproute2", "rsync"):
        assert package in listed, package
        assert {"dev", "core", "backup"} & set(listed[package].split(",")), package
