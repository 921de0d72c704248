"""Deploying and operating labpipe: prefect.yaml, the platform (``labpipe up/down/status``), the demo and the CLI."""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PREFECT_FILE = Path(__file__).resolve().parent / "prefect.yaml"
