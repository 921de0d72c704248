"""Resolving block names: only ``default`` may stand in for a missing document; any other name that does not
load fails, naming the block (a typo in the UI used to back up the default roots, logged at debug level)."""

from __future__ import annotations

import logging

import pytest
from labpipe.blocks import StorageLayout, layout
from labpipe.blocks.registry import model_store
from labpipe.blocks.resolve import OFFLINE_ENV, resolve
from labpipe.blocks.seg import SegmentationDefaults, segmentation_defaults
from labpipe.config import get_settings
from labpipe.errors import ConfigError
from labpipe.layout import Layout
from labpipe.registry import ModelStoreSettings
from labpipe.seg.settings import SegmentationSettings
from prefect import flow


def test_a_misspelt_block_name_fails_naming_the_block():
    with pytest.raises(ConfigError, match=r"labpipe storage layout.*'defualt'.*no such block document"):
        layout("defualt")


def test_a_saved_document_is_returned_as_plain_settings(tmp_path):
    roots = Layout.default(tmp_path / "elsewhere")
    StorageLayout(**roots.model_dump()).save("resolve-test", overwrite=True)
    loaded = layout("resolve-test")
    assert type(loaded) is Layout and loaded.share == roots.share
    SegmentationDefaults(model="big", step_size=0.7).save("resolve-test", overwrite=True)
    defaults = segmentation_defaults("resolve-test")
    assert type(defaults) is SegmentationSettings and (defaults.model, defaults.step_size) == ("big", 0.7)


def test_a_document_loads_where_an_event_loop_runs(tmp_path):
    """As in a Jupyter kernel (the analysis notebook against a running lab): Prefect's load there is async."""
    import asyncio

    roots = Layout.default(tmp_path / "kernel")
    StorageLayout(**roots.model_dump()).save("resolve-in-a-loop", overwrite=True)

    async def notebook_cell():
        return layout("resolve-in-a-loop")

    assert asyncio.run(notebook_cell()).share == roots.share


def test_default_falls_back_with_a_warning_naming_the_home(caplog, monkeypatch):
    from labpipe.blocks.registry import ModelStore

    def missing(cls, name, **_):  # what Prefect raises for a document not saved (another test may have saved one)
        raise ValueError(f"Unable to find block document named {name} for block type labpipe-model-store")

    monkeypatch.setattr(ModelStore, "load", classmethod(missing))

    @flow
    def notebook_run():
        return model_store("default")

    with caplog.at_level(logging.WARNING, logger="labpipe.blocks"):
        assert model_store("default") == ModelStoreSettings()
        assert not [r for r in caplog.records if r.name == "labpipe.blocks"]  # outside a run: info only
        assert notebook_run() == ModelStoreSettings()
    assert any(str(get_settings().home) in r.getMessage() for r in caplog.records), caplog.text


def test_a_document_that_no_longer_validates_fails_even_for_default(monkeypatch):
    def broken(name):
        raise ValueError("1 validation error for StorageLayout\nshare: field required")

    monkeypatch.setattr(StorageLayout, "load", classmethod(lambda cls, name, **_: broken(name)))
    with pytest.raises(ConfigError, match="does not load"):
        resolve(StorageLayout, "default", Layout.default(get_settings().home))


def test_offline_uses_the_builtin_default_and_refuses_other_names(monkeypatch):
    monkeypatch.setenv(OFFLINE_ENV, "1")
    monkeypatch.setattr(StorageLayout, "load", classmethod(lambda cls, name, **_: pytest.fail("contacted the server")))
    assert layout("default") == Layout.default(get_settings().home)
    assert layout(None) == Layout.default(get_settings().home)
    with pytest.raises(ConfigError, match=OFFLINE_ENV):
        layout("lab")
