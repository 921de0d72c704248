"""Radio science demo: a month of one field's images through the science steps, then the products page.

Thirty daily image-plane epochs of a simulated field (twelve steady sources, one variable, one
ESE-like dip) are written where imaging puts them and recorded as images whose science step has not
run; ``radio-image/groups`` resumes it on each (sources, master catalogue, forced photometry,
variability) and plots the candidates' light curves. A token for the products API is written (0600)
and the command that serves the page is printed.
"""

from __future__ import annotations

from labpipe.deployments.demo import DemoContext, DemoResult

ORDER = 26


def run(ctx: DemoContext) -> DemoResult:
    from labpipe.blocks import lab_database
    from labpipe.config import get_settings
    from labpipe.radio import products, simulate, variability
    from labpipe.radio.api import write_token

    radio_root = ctx.layout.ensure().radio
    db = lab_database()
    epochs, sky = simulate.science_epochs(radio_root, 30, start_mjd=59000.25)
    for group, image in epochs:  # what the imaging step records (the centre on the pbcor image, as it does)
        centre = {"ra_deg": image.ra0_deg, "dec_deg": image.dec0_deg}
        for kind, path in image.paths.items():
            products.record_product(db, "image", path, start_mjd=image.mjd, end_mjd=image.mjd + 0.0035,
                                    group_id=group, subtype=kind,
                                    detail=centre if kind == "image.pbcor" else None)  # fmt: skip
    ctx.say(f"{len(epochs)} simulated epochs of a field with {len(sky)} sources (one variable, one ESE-like dip)")
    run = ctx.run("radio-image/groups", timeout=1200)
    flagged = variability.flagged(db)
    curves = products.products(db, kind="lightcurve")
    token_file = get_settings().home / "radio" / "api-token"
    if not token_file.exists():
        write_token(token_file)
    lines = [
        f"variables: {flagged['variable']}, ESE candidates: {flagged['ese_candidate']}",
        *[f"light curve: {p['path']}" for p in curves],
        f"products page: labpipe radio serve  (then open http://127.0.0.1:8790/#token=$(cat {token_file}))",
    ]
    ok = bool(run.state and run.state.is_completed()) and len(flagged["ese_candidate"]) == 1 and bool(curves)
    return DemoResult("radio_science", ok, lines)
