"""Which model store a room lives in (mirrored by the ``ModelStore`` block)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from labpipe.errors import ConfigError
from labpipe.layout import Layout
from labpipe.registry.backends import Backend, FilesystemBackend, S3Backend
from labpipe.registry.registry import Registry
from pydantic import BaseModel, Field, SecretStr


class ModelStoreSettings(BaseModel):
    """A room of the model registry: a file-system root or an S3 bucket, and this host's cache."""

    backend: Literal["filesystem", "s3"] = Field(
        "filesystem", description="filesystem: a folder every worker mounts; s3: an S3-compatible bucket."
    )
    room: str = Field("lab", description="Room (namespace) of the registry: models and aliases are per room.")
    root: Path | None = Field(
        None, description="filesystem backend: folder of rooms; empty: <models root>/registry of the storage layout."
    )
    endpoint_url: str | None = Field(
        None, description="s3 backend: endpoint such as https://s3.example.org:9000; empty: AWS."
    )
    bucket: str = Field("labpipe-models", description="s3 backend: bucket holding the rooms.")
    prefix: str = Field("", description="s3 backend: key prefix before <room>/ (several registries in one bucket).")
    region: str = Field("us-east-1", description="s3 backend: region.")
    access_key_id: SecretStr | None = Field(None, description="s3 backend: access key id; empty: the AWS chain.")
    secret_access_key: SecretStr | None = Field(None, description="s3 backend: secret key; empty: the AWS chain.")
    cache_dir: Path | None = Field(
        None, description="This host's model cache; empty: <models root>/cache of the storage layout."
    )

    def make_backend(self, layout: Layout | None = None) -> Backend:
        if self.backend == "filesystem":
            root = self.root or _layout(layout).models / "registry"
            return FilesystemBackend(root)
        if not self.bucket:
            raise ConfigError("model store", "s3 backend without a bucket", "set bucket in the model store block")
        secret = self.secret_access_key.get_secret_value() if self.secret_access_key else None
        return S3Backend(
            self.bucket,
            endpoint_url=self.endpoint_url,
            prefix=self.prefix,
            region=self.region,
            access_key_id=self.access_key_id.get_secret_value() if self.access_key_id else None,
            secret_access_key=secret,
        )

    def open(self, layout: Layout | None = None, *, room: str | None = None, worker_id: str | None = None) -> Registry:
        """The registry of ``room`` (default: this store's room) as seen from this host."""
        cache = self.cache_dir or _layout(layout).models / "cache"
        return Registry(self.make_backend(layout), room or self.room, cache, worker_id=worker_id)


def _layout(layout: Layout | None) -> Layout:
    if layout is not None:
        return layout
    from labpipe.config import get_settings

    return Layout.default(get_settings().home)
