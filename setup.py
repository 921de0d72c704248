"""Map the top-level folders onto the ``labpipe`` package (metadata is in pyproject.toml)."""

from setuptools import find_packages, setup

FOLDERS = {
    "labpipe": "lib",
    "labpipe.flows": "flows",
    "labpipe.blocks": "blocks",
    "labpipe.cli": "cli",
    "labpipe.deployments": "deployments",
}

packages = [
    name for root, folder in FOLDERS.items() for name in [root] + [f"{root}.{p}" for p in find_packages(folder)]
]
setup(packages=packages, package_dir=FOLDERS)
