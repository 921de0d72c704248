"""The room-level model registry every worker shares (from the SLEAP-RTC design).

A *room* is a namespace of models: one manifest (``manifest.json``: models by id,
an aliases map) and one folder per model (``models/<id>/<files>``), in a file-system
folder or an S3 bucket. Every lifecycle that trains (MEI twins, nnU-Net, pose
models) publishes through it; every worker resolves models through it into a local
cache verified by checksum.

Python API (the CLI ``labpipe models list|show|alias|pull|workers|gc`` is the same)::

    from labpipe.registry import open_registry, ModelStoreSettings

    registry = open_registry()                         # file-system store under $LABPIPE_HOME, room "lab"
    registry = ModelStore.load("default").open()       # the block users edit (labpipe.blocks.registry)
    registry = ModelStoreSettings(backend="s3", endpoint_url="http://127.0.0.1:9000",
                                  bucket="models", room="lab-mice").open()

    entry = registry.publish(
        Path("run/checkpoint_dir"),                    # a folder (or one file) of model files
        model_type="mei-twin",                         # what loads it: mei-twin, nnunet, dlc, ...
        config={"layers": 3, "dataset": "d7f3a1b2"},   # the id is a hash of type + config + file contents
        training={"dataset_hash": "d7f3a1b2", "epochs": 10, "final_loss": 0.02, "training_duration_sec": 15},
        checkpoint="twin.pt", alias="mei-twin-latest", tags=["validated"], metrics={"heldout_r": 0.95},
    )
    registry.set_alias("production-v2", entry.id)      # atomic; only ever onto a model in the manifest
    model = registry.resolve("production-v2")          # -> ResolvedModel(id, path, entry, downloaded)
    torch.load(model.checkpoint)                       # the verified local copy
    registry.list(model_type="mei-twin", tags=["validated"])
    registry.register_worker(host_metadata())          # heartbeat of this worker in the room
    registry.discover({"gpu_memory_mb": {"$gte": 8000}, "status": {"$eq": "available"}})

Guarantees: a publish hashes and uploads a private staged copy of the files (a
checkpoint rewritten meanwhile cannot publish bytes that fail pulls), verifies the
stored bytes (store checksum or read-back, never the uploader's metadata; a store copy
that differs is uploaded again) before the manifest entry is written (a crash in
between leaves no entry pointing at missing files; ``gc`` removes the orphan files
later); ``publishing``/``collecting`` leases in the manifest keep ``gc`` and ``delete``
from deleting the files of a model being published; a store that ignores ``If-Match``
is refused when the registry opens; every manifest change is a conditional write
(S3 ``If-Match`` on the ETag, or compare-and-rename under a lock on a file
system) re-read and re-applied on conflict, so concurrent publishers never lose
an update; aliases only ever point at models in the manifest; a cached model
whose files no longer match their SHA-256 is downloaded again.
"""

from labpipe.registry.backends import Backend, FilesystemBackend, ManifestConflict, S3Backend
from labpipe.registry.cache import ModelCache
from labpipe.registry.discovery import WorkerRecord, host_metadata, matches
from labpipe.registry.manifest import Manifest, ModelEntry, ModelFile, TrainingFacts, derive_model_id
from labpipe.registry.registry import Registry, ResolvedModel
from labpipe.registry.settings import ModelStoreSettings


def open_registry(settings: ModelStoreSettings | None = None, *, room: str | None = None, **kwargs) -> Registry:
    """A registry from settings (a ``ModelStore`` block is one); defaults: file-system store under $LABPIPE_HOME.

    In flows, ``labpipe.flows.training.model_registry()`` opens the one the ``ModelStore`` block configures.
    """
    return (settings or ModelStoreSettings()).open(room=room, **kwargs)


__all__ = [
    "Backend",
    "FilesystemBackend",
    "Manifest",
    "ManifestConflict",
    "ModelCache",
    "ModelEntry",
    "ModelFile",
    "ModelStoreSettings",
    "Registry",
    "ResolvedModel",
    "S3Backend",
    "TrainingFacts",
    "WorkerRecord",
    "derive_model_id",
    "host_metadata",
    "matches",
    "open_registry",
]
