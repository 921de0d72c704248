"""Segmentation as a service (CryoMamba's inference server): uploads, jobs, live previews, signed downloads.

Modules: ``errors`` (the one error envelope), ``settings`` (limits and folders),
``auth`` (JWT bearer tokens, the 0600 key file, signed URLs), ``limits`` (rate
limit per token, parts in flight), ``uploads`` (resumable uploads assembled,
checked and validated before a file exists), ``live`` (the per-job folder a
segment run publishes its progress, newest preview and result to), ``jobs``
(job records and the ``JobRunner`` protocol a Prefect implementation fills in
``labpipe.flows.segment``), ``service`` (the rules tying them together) and
``app`` (the FastAPI application). Nothing here imports Prefect.
"""
