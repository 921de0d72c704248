"""``labpipe radio products``: the radio products catalogue (MS, calibration tables, images, mosaics, QA).

``labpipe radio products --date 2025-10-13 [--kind image] [--group G] [--json]`` lists what the radio
lifecycle wrote, from the database (no directory walking); ``labpipe radio products --held`` lists
science groups waiting for a valid calibration, ``--tables`` the calibration registry.
Mounted under ``labpipe radio`` by ``cli/radio.py``; NAME = None keeps it off the top level.
"""

from __future__ import annotations

import datetime as dt
import json

import typer

NAME = None  # a subcommand of `labpipe radio`, not a group of its own
app = typer.Typer(help="Radio products catalogue and calibration registry.", invoke_without_command=True)


def _database():
    from labpipe.blocks import lab_database

    return lab_database()


@app.callback()
def products(
    date: str = typer.Option(None, "--date", help="Observation date YYYY-MM-DD."),
    kind: str = typer.Option(None, help="ms, caltable, image, mosaic, qa, catalogue or lightcurve."),
    group: str = typer.Option(None, help="Group id (ISO timestamp)."),
    held: bool = typer.Option(False, "--held", help="List held science groups instead."),
    registry_tables: bool = typer.Option(False, "--tables", help="List the calibration registry instead."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List radio products (or held groups, or registered calibration tables)."""
    from labpipe.radio import calregistry
    from labpipe.radio import products as catalogue

    db = _database()
    if held:
        rows = calregistry.held_groups(db)
        columns = ["group_id", "held_since", "reason", "ms_path"]
    elif registry_tables:
        rows = calregistry.tables(db).CalTable.to_dicts(order_by="solve_mjd")
        columns = ["table_name", "kind", "status", "valid_start_mjd", "valid_end_mjd", "median_snr", "flagged_fraction"]
    else:
        day = None
        if date:
            try:
                day = dt.date.fromisoformat(date)
            except ValueError as exc:
                raise typer.BadParameter(f"{date!r} is not a date (expected YYYY-MM-DD)") from exc
        rows = catalogue.products(db, date=day, kind=kind, group_id=group)
        columns = ["kind", "subtype", "group_id", "obs_date", "size_bytes", "path"]
    if as_json:
        typer.echo(json.dumps(rows, indent=1, default=str))
        return
    for row in rows:
        typer.echo("  ".join(str(row.get(c, "")) for c in columns))
    typer.echo(f"{len(rows)} rows")
