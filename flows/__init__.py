"""labpipe's Prefect flows: one module per lifecycle, thin wiring of ``labpipe`` (lib/) calls.

Import a flow in a notebook (``from labpipe.flows.ingest import ingest``) or
deploy it by entrypoint (``flows/ingest.py:ingest``) from deployments/prefect.yaml.
"""
