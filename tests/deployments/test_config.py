"""`labpipe config export / apply` against the session's Prefect server.

The first export and the refused file run as real processes (file mode, the error lines and exit code of the
console script); the other steps call the same command in this process (each real process costs seconds).
"""

import os
import subprocess
import sys
import uuid

import pytest
import yaml
from labpipe.deployments.platform import block_classes
from labpipe.errors import ConfigError
from labpipe.layout import Layout

# every secret field of every labpipe block type, with a value (the rest of each document keeps its defaults)
SECRETS = {
    "labpipe-lab-database": {"url": "postgresql://lab:pw-database@db.example/lab"},
    "labpipe-borg-repository": {"passphrase": "pw-borg"},
    "labpipe-rclone-remote": {"type": "s3", "secret_options": {"access_key_id": "AK", "secret_access_key": "pw-s3"}},
    "labpipe-model-store": {"access_key_id": "AK2", "secret_access_key": "pw-model-store"},
    "labpipe-vm-allocation": {"database_url": "postgresql://vms:pw-vms@db.example/vms"},
    "labpipe-pyrat-connection": {"url": "https://pyrat.example/p", "client_token": "pw-c", "user_token": "pw-u"},
    "labpipe-rspace-notebook": {"url": "https://rspace.example", "api_key": "pw-rspace"},
    "labpipe-lab-alerts": {"smtp": {"password": "pw-alerts"}},
    "labpipe-smtp-email": {"password": "pw-smtp"},
}


@pytest.fixture
def labpipe(tmp_path):
    """``labpipe(*args, env=...)``: the command in a subprocess, talking to this session's Prefect test server."""
    from prefect.settings import get_current_settings

    api_url = str(get_current_settings().api.url)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "LABPIPE_SECRET_"))}
    base.update(
        PREFECT_API_URL=api_url,
        LABPIPE_PREFECT_API_URL=api_url,
        LABPIPE_HOME=str(tmp_path / "home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        COLUMNS="300",
    )

    def run(*args, env=None):
        return subprocess.run(
            [sys.executable, "-m", "labpipe.cli", *args],
            env={**base, **(env or {})},
            capture_output=True,
            text=True,
            timeout=300,
        )

    return run


def cli(*args, env=None):
    """The command in this process (Typer's runner): stdout, stderr, exit_code and any exception it raised."""
    from labpipe.cli import app
    from typer.testing import CliRunner

    return CliRunner().invoke(app, list(args), env=env)


def _save_one_of_every_type(name: str, tmp_path, only: set[str] | None = None) -> dict[str, type]:
    saved = {}
    for cls in block_classes():
        slug = cls.get_block_type_slug()
        if only is not None and slug not in only:
            continue
        if slug == "labpipe-storage-layout":
            block = cls(**Layout.default(tmp_path / "before").model_dump())
        else:
            block = cls(**SECRETS.get(slug, {}))
        block.save(name, overwrite=True)
        saved[slug] = cls
    return saved


def test_export_edit_dry_run_apply_and_export_again(labpipe, tmp_path):
    name = f"config-{uuid.uuid4().hex[:8]}"
    saved = _save_one_of_every_type(name, tmp_path)
    exported = tmp_path / "lab.yaml"
    first = labpipe("config", "export", str(exported), "--include-secrets")
    assert first.returncode == 0, first.stderr
    assert "clear text" in first.stderr and oct(exported.stat().st_mode & 0o777) == "0o600"
    original = exported.read_text()
    blocks = yaml.safe_load(original)["blocks"]
    assert {slug for slug in blocks if name in blocks[slug]} == set(saved)  # every block type, this document
    assert blocks["labpipe-borg-repository"][name]["passphrase"] == "pw-borg"

    before, after = str(tmp_path / "before" / "data" / "share"), str(tmp_path / "after-share")
    assert original.count(f"share: {before}\n") == 1
    edited = original.replace(f"share: {before}\n", f"share: {after}\n")
    exported.write_text(edited)

    dry = cli("config", "apply", str(exported), "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert dry.stdout.splitlines()[:2] == [
        f"labpipe-storage-layout/{name}: changed",
        f'  ~ share: "{before}" -> "{after}"',
    ]
    assert dry.stdout.splitlines()[-1].startswith("0 new, 1 changed,") and "nothing saved" in dry.stdout
    assert len(dry.stdout.splitlines()) == 3
    unchanged = cli("config", "export", "-", "--include-secrets")
    assert unchanged.exit_code == 0 and unchanged.stdout == original  # the dry run saved nothing

    applied = cli("config", "apply", str(exported))
    assert applied.exit_code == 0, applied.output
    assert applied.stdout.splitlines()[-1].endswith("saved 1")
    assert str(saved["labpipe-storage-layout"].load(name).share) == after
    again = cli("config", "export", "-", "--include-secrets")
    assert again.stdout == edited


def test_secrets_are_exported_as_references_and_applied_from_the_environment(tmp_path):
    for cls in block_classes():  # a new secret field needs a value above
        secret_fields = {path.split(".")[0] for path in cls.model_json_schema()["secret_fields"]}
        assert secret_fields <= set(SECRETS.get(cls.get_block_type_slug(), {})), cls.__name__
    name = f"secret-{uuid.uuid4().hex[:8]}"
    assert set(_save_one_of_every_type(name, tmp_path, only=set(SECRETS))) == set(SECRETS)
    result = cli("config", "export", str(tmp_path / "lab.yaml"))
    assert result.exit_code == 0, result.output
    text = (tmp_path / "lab.yaml").read_text()
    for value in ("pw-database", "pw-borg", "pw-s3", "pw-model-store", "pw-vms"):
        assert value not in text
    borg_env = f"LABPIPE_SECRET_BORG_REPOSITORY_{name.upper().replace('-', '_')}_PASSPHRASE"
    s3_env = f"LABPIPE_SECRET_RCLONE_REMOTE_{name.upper().replace('-', '_')}_SECRET_OPTIONS_SECRET_ACCESS_KEY"
    blocks = yaml.load(text, Loader=_TagKeepingLoader)["blocks"]
    assert blocks["labpipe-borg-repository"][name]["passphrase"] == f"!env {borg_env}"
    assert blocks["labpipe-rclone-remote"][name]["secret_options"]["secret_access_key"] == f"!env {s3_env}"
    assert borg_env in result.stderr and s3_env in result.stderr

    # a lab's own file: its borg repository, with the passphrase from the environment
    own = tmp_path / "borg.yaml"
    own.write_text(
        "labpipe_config: 1\nblocks:\n  labpipe-borg-repository:\n"
        f"    {name}:\n      repository: /backup/borg/lab\n      passphrase: !env {borg_env}\n"
    )
    refused = cli("config", "apply", str(own), env={borg_env: None})
    assert refused.exit_code != 0 and isinstance(refused.exception, ConfigError)
    assert f"labpipe-borg-repository/{name}: passphrase: the environment variable {borg_env} is not set" in (
        refused.exception.problem
    )
    from labpipe.blocks.backup import BackupRepository

    assert BackupRepository.load(name).passphrase.get_secret_value() == "pw-borg"
    applied = cli("config", "apply", str(own), env={borg_env: "pw-borg-rotated"})
    assert applied.exit_code == 0, applied.output
    assert f"labpipe-borg-repository/{name}: changed" in applied.stdout
    assert "~ passphrase: (secret changed)" in applied.stdout and "pw-borg" not in applied.stdout
    stored = BackupRepository.load(name)
    assert stored.passphrase.get_secret_value() == "pw-borg-rotated" and stored.repository == "/backup/borg/lab"


class _TagKeepingLoader(yaml.SafeLoader):
    """Reads ``!env NAME`` as the text ``!env NAME`` (what a reader of the file sees)."""


_TagKeepingLoader.add_constructor("!env", lambda loader, node: f"!env {loader.construct_scalar(node)}")


def test_an_invalid_file_is_refused_whole_naming_each_document_and_field(labpipe, tmp_path):
    from labpipe.blocks import DaskCluster, StorageLayout
    from prefect.exceptions import ObjectNotFound

    name = f"invalid-{uuid.uuid4().hex[:8]}"
    DaskCluster(n_workers=2).save(name)
    layout = Layout.default(tmp_path).model_dump(mode="json")
    config = {
        "labpipe_config": 1,
        "blocks": {
            "labpipe-storage-layout": {name: layout},  # valid and new: must not be saved either
            "labpipe-dask-cluster": {name: {"n_workers": "many", "threads_per_workr": 2}},
            "labpipe-no-such-type": {"default": {}},
        },
    }
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    result = labpipe("config", "apply", str(tmp_path / "bad.yaml"), "--dry-run")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"error: {tmp_path / 'bad.yaml'}: refused, nothing was saved (3 problems):")
    assert f"labpipe-dask-cluster/{name}: n_workers: Input should be a valid integer" in result.stderr
    assert f"labpipe-dask-cluster/{name}: threads_per_workr: no such field" in result.stderr
    assert "labpipe-no-such-type: not a labpipe block type" in result.stderr
    assert "hint: " in result.stderr and "Traceback" not in result.stderr

    config["blocks"].pop("labpipe-no-such-type")
    config["blocks"]["labpipe-dask-cluster"][name]["n_workers"] = 3
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    typo = cli("config", "apply", str(tmp_path / "bad.yaml"))
    assert isinstance(typo.exception, ConfigError)
    assert f"labpipe-dask-cluster/{name}: threads_per_workr: no such field" in typo.exception.problem
    assert DaskCluster.load(name).n_workers == 2
    with pytest.raises((ObjectNotFound, ValueError)):
        StorageLayout.load(name)
