"""``labpipe models`` end to end on the default (file-system) store of the test's $LABPIPE_HOME."""

from __future__ import annotations

import json
import uuid

from labpipe.cli.models import app
from typer.testing import CliRunner


def test_models_cli(model_dir):
    runner = CliRunner()
    room = ["--room", f"cli-{uuid.uuid4().hex[:6]}"]

    def run(*args):
        return runner.invoke(app, [*args, *room])

    published = run("publish", str(model_dir()), "--type", "mei-twin", "--alias", "production-v2", "--tag", "v2")
    assert published.exit_code == 0, published.output
    model_id = published.output.split()[1]
    listed = run("list", "--json")
    assert [m["id"] for m in json.loads(listed.output)] == [model_id]
    assert json.loads(run("show", "production-v2").output)["tags"] == ["v2"]
    second = run("publish", str(model_dir(b"other", "m2")), "--type", "mei-twin").output.split()[1]
    assert run("alias", "production-v2", second).output.strip() == f"production-v2 -> {second}"
    pulled = run("pull", "production-v2")
    assert pulled.exit_code == 0 and second in pulled.output and "downloaded" in pulled.output
    assert "already cached" in run("pull", second).output
    missing = run("alias", "staging", "deadbeef")
    assert missing.exit_code == 2 and "no model or alias" in missing.output
    bad = run("workers", "--filter", '{"gpu_memory_mb": {"$gtee": 1}}')
    assert bad.exit_code == 2 and "unknown filter operator" in bad.output
    assert run("delete", second).exit_code == 2  # still aliased
    assert run("delete", second, "--force").exit_code == 0
    assert [m["id"] for m in json.loads(run("list", "--json").output)] == [model_id]
