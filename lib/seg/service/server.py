"""Run the segmentation service: its environment (models, GPUs), the app, uvicorn with or without TLS.

Bearer tokens never cross a network in clear: the service serves TLS itself
(``certfile``/``keyfile``) or listens on loopback behind a reverse proxy that
terminates TLS (the same rule as the VM allocator and the radio API).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from labpipe.layout import Layout
from labpipe.seg.service.auth import Keys
from labpipe.seg.service.jobs import JobRunner
from labpipe.seg.service.service import Environment, SegService
from labpipe.seg.service.settings import ServiceSettings

log = logging.getLogger("labpipe.seg.service")


@functools.cache
def host_gpus() -> list[dict]:
    """This host's GPUs as ``/v1/server/info`` lists them (read once: they do not come and go)."""
    from labpipe.vms.gpu import check_gpu

    facts = check_gpu()
    if not facts.present:
        return []
    memory = facts.memory_total_mb * (1 << 20) if facts.memory_total_mb else None
    return [{"index": i, "name": facts.name, "memory_bytes": memory} for i in range(facts.count or 1)]


def host_environment(layout: Layout) -> Environment:
    """The models under ``<models>/seg/`` (read at every ask: a model trained meanwhile appears) and the GPUs."""
    from labpipe.seg.nnunet import list_models

    def models() -> dict[str, dict]:
        return {m.name: {"name": m.name, "labels": m.labels, "patch_size": m.patch_size,
                         "voxel_size_zyx": m.voxel_size_zyx, "network": m.network, "trainer": m.trainer}
                for m in list_models(layout)}  # fmt: skip

    return Environment(models=models, gpus=host_gpus, device=lambda: "cuda" if host_gpus() else "cpu")


def build_service(settings: ServiceSettings, runner: JobRunner, environment: Environment) -> SegService:
    """The service on its data folder and key file (created, 0600, when missing); ConfigError on a bad one."""
    Path(settings.data).mkdir(parents=True, exist_ok=True)
    return SegService(settings, Keys.from_file(settings.key_file), runner, environment)


def uvicorn_config(service: SegService, host: str, port: int, certfile: Path | None, keyfile: Path | None, **kw):
    """uvicorn's config: TLS when given a certificate and key; refuses plain HTTP beyond loopback."""
    from labpipe.seg.service.app import create_app
    from labpipe.vms.server import check_listen, server_config

    check_listen(host, certfile, keyfile, service="the segmentation service", doc="docs/segmentation.md")
    # no access log: a signed link's query string is a credential; ws pings keep proxies from idling it out
    return server_config(create_app(service), host, port, certfile, keyfile, access_log=False, **kw)
