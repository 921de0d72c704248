"""``labpipe db``: where the lab database is, dumps and restores."""

from __future__ import annotations

from pathlib import Path

import typer

NAME = "db"
app = typer.Typer(
    help="The lab database (embedded PostgreSQL unless LABPIPE_DATABASE_URL is set).", no_args_is_help=True
)


@app.command()
def url() -> None:
    """Print the database URL (password left out), starting the embedded server if needed."""
    from labpipe.blocks import lab_database

    db = lab_database()
    typer.echo(db.target.url)
    for name in db.existing_schemas():
        typer.echo(f"  schema {name}")


@app.command()
def dump(to: Path = typer.Option(None, help="Folder for the dump; default: the dumps root.")) -> None:
    """Write a consistent dump of every labpipe schema."""
    from labpipe.blocks import lab_database, layout
    from labpipe.db.connect import dump_lab_database

    typer.echo(dump_lab_database(lab_database(), to or layout().dumps))


@app.command()
def restore(
    dump_file: Path = typer.Argument(..., exists=True, dir_okay=False),
    url: str = typer.Option(..., help="Target database URL (for PostgreSQL an empty database)."),
) -> None:
    """Load a dump into the database at URL."""
    from labpipe.db.dump import restore_dump
    from labpipe.db.target import DatabaseTarget

    restore_dump(dump_file, DatabaseTarget.from_url(url))
    typer.echo(f"restored {dump_file.name} into {DatabaseTarget.from_url(url).url}")
