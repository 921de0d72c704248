"""``labpipe models``: the room's model registry from the command line (list, show, alias, pull, ...)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from labpipe.cli.common import echo_json, fail

NAME = "models"
app = typer.Typer(help="The room-level model registry every worker shares.", no_args_is_help=True)

RoomOption = typer.Option(None, "--room", help="Registry room (default: the model store block's room).")
BlockOption = typer.Option("default", "--block", help="ModelStore block to use.")


def _registry(room: str | None, block: str):
    from labpipe.blocks.registry import model_registry

    return model_registry(block, room=room)


@app.command("list")
def list_models(
    model_type: str = typer.Option(None, "--type", help="Only models of this type (mei-twin, nnunet, ...)."),
    tag: list[str] = typer.Option(None, "--tag", help="Only models with this tag (repeatable)."),
    as_json: bool = typer.Option(False, "--json"),
    room: str = RoomOption,
    block: str = BlockOption,
) -> None:
    """Models of the room, newest first, with their aliases."""
    registry = _registry(room, block)
    manifest = registry.manifest()
    models = registry.list(model_type=model_type, tags=tag or ())
    if as_json:
        echo_json([m.model_dump(mode="json") for m in models])
        return
    typer.echo(f"room {registry.room} ({registry.backend!r}), revision {manifest.revision}")
    for m in models:
        aliases = ", ".join(manifest.aliases_of(m.id))
        typer.echo(
            f"  {m.id}  {m.model_type:<12} {m.trained_at:%Y-%m-%d %H:%M}  {m.size_bytes / 1e6:8.2f} MB  "
            f"{m.trained_on_worker:<18} {aliases}"
        )
    typer.echo(f"{len(models)} models")


@app.command()
def show(
    ref: str = typer.Argument(..., help="Model id, id prefix or alias."),
    room: str = RoomOption,
    block: str = BlockOption,
) -> None:
    """The full manifest entry of one model."""
    try:
        entry = _registry(room, block).show(ref)
    except Exception as exc:
        fail(exc)
    echo_json(entry.model_dump(mode="json"))


@app.command()
def alias(
    name: str = typer.Argument(..., help="Alias to set, e.g. production-v2."),
    ref: str = typer.Argument(None, help="Model id, id prefix or alias it should point at."),
    remove: bool = typer.Option(False, "--remove", help="Remove the alias instead."),
    room: str = RoomOption,
    block: str = BlockOption,
) -> None:
    """Point an alias at a model (atomic; only ever at a model in the manifest), or remove it."""
    registry = _registry(room, block)
    try:
        if remove:
            registry.remove_alias(name)
            typer.echo(f"removed alias {name}")
            return
        if not ref:
            raise typer.BadParameter("give the model the alias should point at", param_hint="REF")
        entry = registry.set_alias(name, ref)
    except typer.BadParameter:
        raise
    except Exception as exc:
        fail(exc)
    typer.echo(f"{name} -> {entry.id}")


@app.command()
def pull(
    ref: str = typer.Argument(..., help="Model id, id prefix or alias."),
    room: str = RoomOption,
    block: str = BlockOption,
) -> None:
    """Download a model into this host's cache (verified by checksum) and print its local folder."""
    try:
        model = _registry(room, block).pull(ref)
    except Exception as exc:
        fail(exc)
    typer.echo(f"{model.id} {'downloaded' if model.downloaded else 'already cached'}: {model.path}")


@app.command()
def publish(
    path: Path = typer.Argument(..., exists=True, help="Model file or folder."),
    model_type: str = typer.Option(..., "--type", help="Model type (what loads it)."),
    checkpoint: str = typer.Option(None, help="Main checkpoint file inside the folder."),
    alias_name: str = typer.Option(None, "--alias", help="Alias to point at the new model."),
    tag: list[str] = typer.Option(None, "--tag"),
    notes: str = typer.Option(""),
    config: str = typer.Option("{}", help="Training config as JSON (part of the model id)."),
    room: str = RoomOption,
    block: str = BlockOption,
) -> None:
    """Publish a model trained elsewhere: files first, then the manifest entry."""
    try:
        entry = _registry(room, block).publish(
            path,
            model_type=model_type,
            checkpoint=checkpoint,
            alias=alias_name,
            tags=tag or (),
            notes=notes,
            config=json.loads(config),
        )
    except Exception as exc:
        fail(exc)
    typer.echo(f"published {entry.id} ({entry.size_bytes} bytes) at {entry.s3_path}")


@app.command()
def delete(
    ref: str,
    force: bool = typer.Option(False, help="Also remove aliases naming it."),
    room: str = RoomOption,
    block: str = BlockOption,
) -> None:
    """Remove a model from the manifest, then its files."""
    try:
        typer.echo(f"deleted {_registry(room, block).delete(ref, force=force)}")
    except Exception as exc:
        fail(exc)


def _online_workers(pool: str) -> set[str]:
    """Names of the pool's workers the Prefect server sees online (``<pool>@<host>``, as ``labpipe up`` names them)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return {w.name for w in client.read_workers_for_work_pool(pool) if str(w.status).upper().endswith("ONLINE")}


@app.command()
def workers(
    filters: str = typer.Option("{}", "--filter", help='Metadata filter, e.g. \'{"gpu_memory_mb": {"$gte": 8000}}\'.'),
    pool: str = typer.Option("gpu", help="Work pool the workers serve ('' for all)."),
    max_age: float = typer.Option(600, help="Ignore workers whose last heartbeat is older (seconds)."),
    online: bool = typer.Option(False, help="Only workers the Prefect server reports online in the pool."),
    as_json: bool = typer.Option(False, "--json"),
    room: str = RoomOption,
    block: str = BlockOption,
) -> None:
    """Workers of the room whose metadata matches a filter (discovery)."""
    try:
        only = _online_workers(pool or "gpu") if online else None
        found = _registry(room, block).discover(
            json.loads(filters), pool=pool or None, max_age_seconds=max_age, only=only
        )
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint="--filter") from exc
    except Exception as exc:
        fail(exc)
    if as_json:
        echo_json([w.model_dump(mode="json") for w in found])
        return
    for w in found:
        typer.echo(f"  {w.worker_id:<24} pool {w.pool:<5} heartbeat {w.age_seconds():6.0f} s ago  {w.metadata}")
    typer.echo(f"{len(found)} workers match")


@app.command()
def gc(
    min_age: float = typer.Option(3600, help="Only files older than this (seconds): a publish may be running."),
    publish_lease: float = typer.Option(
        86400, help="Keep files of a model whose publish began less than this long ago (seconds)."
    ),
    room: str = RoomOption,
    block: str = BlockOption,
) -> None:
    """Delete model files no manifest entry names (left by a crashed publish), never those of a running publish."""
    removed = _registry(room, block).gc(min_age_seconds=min_age, publish_lease_seconds=publish_lease)
    typer.echo(f"removed {len(removed)} orphan files")
