"""Where a flow's Dask work runs: the SLURM settings are checked before any job is submitted (an unknown
partition is refused by the one-node SLURM of tests/e2e/lab/test_slurm.py)."""

from __future__ import annotations

import pytest
from labpipe.compute import DaskSettings, SlurmSettings, dask_client
from labpipe.errors import ConfigError
from labpipe.seg.cluster import window_cluster


def test_no_sbatch_on_path_names_the_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # a host without SLURM's client programs
    refused = pytest.raises(ConfigError, match=r"DaskSettings\.slurm: sbatch is not on PATH")
    with refused as caught, dask_client(DaskSettings(slurm=SlurmSettings())):
        pass
    assert "slurm-client" in caught.value.hint


def test_an_address_and_slurm_together_are_refused():
    both = DaskSettings(address="tcp://127.0.0.1:8786", slurm=SlurmSettings())
    with pytest.raises(ConfigError, match=r"DaskSettings\.slurm: is set together with `address`"), dask_client(both):
        pass


def test_the_block_reads_slurm_settings_back():
    settings = DaskSettings.model_validate({"slurm": {"queue": "lab", "cores": 2, "memory": "4GiB", "jobs": 3}})
    assert settings.slurm == SlurmSettings(queue="lab", cores=2, memory="4GiB", jobs=3)
    assert DaskSettings.model_validate_json(settings.model_dump_json()) == settings


def test_segmentation_windows_on_slurm_use_the_jobs_cores():
    settings = DaskSettings(slurm=SlurmSettings(cores=4, processes=2))
    assert window_cluster(settings, "cpu", None) == (settings, 2)
