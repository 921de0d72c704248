"""The simulated lab runs infra/systemd's units as systemd would: variables, specifiers, /opt/labpipe mapped."""

import sys
from pathlib import Path

from labpipe.lab.simulate import CHECKOUT, unit_command

VENV_BIN = Path(sys.executable).parent


def test_a_split_variable_becomes_several_words_and_a_braced_one_stays_one():
    env = {
        "DASK_SCHEDULER_ADDRESS": "tls://10.0.0.1:8786",
        "LABPIPE_HOST_ADDRESS": "10.0.0.2",
        "DASK_WORKER_ARGS": "--nworkers 1 --resources GPU=1",
    }
    argv, extra, workdir = unit_command("labpipe-dask-worker.service", env)
    assert argv == [str(VENV_BIN / "dask"), "worker", "tls://10.0.0.1:8786", "--host", "10.0.0.2"] + [
        "--dashboard-address",
        "127.0.0.1:0",
        "--nworkers",
        "1",
        "--resources",
        "GPU=1",
    ]
    assert workdir == CHECKOUT and extra == {}


def test_the_pool_worker_unit_gets_its_instance_host_and_project_root():
    argv, extra, workdir = unit_command("labpipe-worker@.service", {}, instance="gpu", host="gpu")
    assert argv[:3] == [sys.executable, "-m", "labpipe.lab.secretenv"]
    assert argv[3:] == [str(VENV_BIN / "prefect"), "worker", "start", "--pool", "gpu", "--type", "process"] + [
        "--name",
        "gpu@gpu",
    ]
    assert extra == {"LABPIPE_PROJECT_ROOT": str(CHECKOUT)} and workdir == CHECKOUT


def test_the_server_unit_serves_tls_on_the_hosts_address():
    env = {
        "PREFECT_SERVER_API_HOST": "10.0.0.1",
        "PREFECT_SERVER_API_PORT": "4200",
        "LABPIPE_TLS_CERT": "/etc/labpipe/tls/main.pem",
        "LABPIPE_TLS_KEY": "/etc/labpipe/tls/main-key.pem",
    }
    argv, extra, _ = unit_command("labpipe-prefect-server.service", env)
    assert argv[argv.index("--host") + 1] == "10.0.0.1" and argv[argv.index("--port") + 1] == "4200"
    assert argv[argv.index("--ssl-keyfile") + 1] == "/etc/labpipe/tls/main-key.pem"
    assert extra == {"PREFECT__SERVER_FINAL": "1"}
