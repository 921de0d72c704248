"""Block pickers in the run forms: every `*_block` parameter's schema offers the saved documents of its block type.

Against the session's Prefect server: a deployment with the real parameter schema of a flow, documents saved,
the pickers refreshed as `labpipe up` and `labpipe config apply` do, and what the server then accepts.
"""

import inspect
import uuid

import httpx
import pytest
import yaml
from labpipe.blocks import DaskCluster, LabDatabase, StorageLayout
from labpipe.blocks.seg import SegmentationDefaults
from labpipe.deployments import PREFECT_FILE
from labpipe.deployments.pickers import BLOCK_SUFFIX, block_parameters, refresh_pickers, with_choices
from labpipe.layout import Layout


def _entrypoints() -> list[str]:
    return sorted({d["entrypoint"] for d in yaml.safe_load(PREFECT_FILE.read_text())["deployments"]})


def _flow(entrypoint: str):
    import importlib

    path, _, name = entrypoint.partition(":")
    return getattr(importlib.import_module("labpipe." + path.removesuffix(".py").replace("/", ".")), name)


@pytest.mark.parametrize("entrypoint", _entrypoints())
def test_every_block_parameter_of_a_deployed_flow_is_traced_to_the_block_its_loader_resolves(entrypoint):
    from prefect.blocks.core import Block

    names = {p for p in inspect.signature(_flow(entrypoint).fn).parameters if p.endswith(BLOCK_SUFFIX)}
    traced = block_parameters(entrypoint)
    assert set(traced) == names, f"not traced to a loader: {names - set(traced)}"
    assert all(issubclass(cls, Block) for cls in traced.values())


def test_the_block_type_comes_from_the_loader_the_flow_calls():
    # segment hands its parameters on with **dict(locals())
    assert block_parameters("flows/segment.py:segment") == {
        "seg_block": SegmentationDefaults,
        "layout_block": StorageLayout,
        "dask_block": DaskCluster,
    }
    # through a helper that opens the database (lab_database(db, layout) -> two loaders)
    assert block_parameters("flows/ingest.py:dump_database") == {"db_block": LabDatabase, "layout_block": StorageLayout}
    # through subflows called with **dict(store_block=..., ...)
    assert block_parameters("flows/training.py:mei_loop")["store_block"].__name__ == "ModelStore"
    assert block_parameters("flows/another_project.py:its_flow") == {}  # not labpipe's: left as it is


def test_choices_go_into_the_string_member_and_keep_none():
    schema = {"properties": {"layout_block": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": "default"}}}
    chosen = with_choices(schema, {"layout_block": ["default", "nas"]})
    assert chosen["properties"]["layout_block"]["anyOf"] == [{"type": "string", "enum": ["default", "nas"]},
                                                             {"type": "null"}]  # fmt: skip
    assert "enum" not in schema["properties"]["layout_block"]["anyOf"][0]  # the input is left as it was


def _deploy_diskwatch(client) -> str:
    """A deployment of flows/backup.py:diskwatch with the schema `prefect deploy` writes for it."""
    from prefect.utilities.callables import parameter_schema

    flow = _flow("flows/backup.py:diskwatch")
    flow_id = client.create_flow_from_name(flow.name)
    return client.create_deployment(
        flow_id=flow_id,
        name=f"pickers-{uuid.uuid4().hex[:6]}",
        entrypoint="flows/backup.py:diskwatch",
        parameter_openapi_schema=parameter_schema(flow.fn).model_dump_for_openapi(),
        enforce_parameter_schema=True,
    )


def _choices(client, deployment_id) -> dict[str, list[str]]:
    props = client.read_deployment(deployment_id).parameter_openapi_schema["properties"]
    return {name: next(m for m in props[name]["anyOf"] if m.get("type") == "string").get("enum") for name in props}


def test_the_deployed_schema_offers_the_saved_documents_and_a_new_one_after_a_refresh(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    api = str(get_current_settings().api.url)
    first, late = f"nas-{uuid.uuid4().hex[:6]}", f"late-{uuid.uuid4().hex[:6]}"
    StorageLayout(**Layout.default(tmp_path / "nas").model_dump()).save(first, overwrite=True)
    with get_client(sync_client=True) as client:
        deployment_id = _deploy_diskwatch(client)
        refresh_pickers(client)
        choices = _choices(client, deployment_id)
        assert choices["layout_block"][0] == "default" and first in choices["layout_block"]
        assert first not in choices["watch_block"] and "default" in choices["watch_block"]  # its own type only

        StorageLayout(**Layout.default(tmp_path / "late").model_dump()).save(late, overwrite=True)
        assert late not in _choices(client, deployment_id)["layout_block"]  # saved outside labpipe: not yet
        refused = httpx.post(f"{api}/deployments/{deployment_id}/create_flow_run",
                             json={"parameters": {"layout_block": late}})  # fmt: skip
        assert refused.status_code == 409 and "is not one of" in refused.text  # the server names the choices

        refresh_pickers(client)  # what `labpipe up`, `labpipe config apply` and `labpipe config pickers` run
        assert late in _choices(client, deployment_id)["layout_block"]
        accepted = httpx.post(f"{api}/deployments/{deployment_id}/create_flow_run",
                              json={"parameters": {"layout_block": late}})  # fmt: skip
        assert accepted.status_code == 201, accepted.text


def test_a_name_outside_the_choices_still_works_from_python(tmp_path):
    from labpipe.flows.backup import diskwatch

    name = f"unlisted-{uuid.uuid4().hex[:6]}"  # saved after the last refresh: no picker offers it
    roots = Layout.default(tmp_path / "unlisted")
    StorageLayout(**roots.model_dump()).save(name, overwrite=True)
    diskwatch(layout_block=name)
    assert (roots.backups / "diskwatch" / "labpipe_disk.prom").is_file()  # it ran on that document's roots


def test_config_apply_refreshes_the_pickers(tmp_path):
    from labpipe.cli import app
    from prefect.client.orchestration import get_client
    from typer.testing import CliRunner

    name = f"applied-{uuid.uuid4().hex[:6]}"
    config = tmp_path / "lab.yaml"
    roots = {k: str(v) for k, v in Layout.default(tmp_path / "applied").model_dump().items()}
    config.write_text(yaml.safe_dump({"labpipe_config": 1, "blocks": {"labpipe-storage-layout": {name: roots}}}))
    with get_client(sync_client=True) as client:
        deployment_id = _deploy_diskwatch(client)
        result = CliRunner().invoke(app, ["config", "apply", str(config)])
        assert result.exit_code == 0, result.output
        assert name in _choices(client, deployment_id)["layout_block"]
