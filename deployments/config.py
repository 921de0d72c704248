"""Configuration as code: every labpipe block document in one YAML file (``labpipe config export / apply``).

The file holds the documents of every block type labpipe registers (``labpipe.blocks``), by block type
slug and document name::

    labpipe_config: 1
    blocks:
      labpipe-borg-repository:
        default:
          repository: /backup/borg/lab
          passphrase: !env LABPIPE_SECRET_BORG_REPOSITORY_DEFAULT_PASSPHRASE

A secret field is written as ``!env NAME`` (apply reads it from that environment variable) unless the
export was asked to include secrets. ``apply`` validates every document against its block class, and
resolves every ``!env``, before it saves anything: one problem refuses the whole file. It creates and
updates documents; it never deletes one that the file does not name.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from labpipe.errors import ConfigError

FORMAT_VERSION = 1
SECRET_ENV_PREFIX = "LABPIPE_SECRET_"
_PAGE = 200


@dataclass(frozen=True)
class EnvRef:
    """A secret kept out of the file: the name of the environment variable that holds it."""

    name: str


class _Dumper(yaml.SafeDumper):
    pass


class _Loader(yaml.SafeLoader):
    pass


_Dumper.add_representer(EnvRef, lambda dumper, ref: dumper.represent_scalar("!env", ref.name))
_Loader.add_constructor("!env", lambda loader, node: EnvRef(loader.construct_scalar(node)))


@dataclass
class Document:
    """One block document, its fields as plain data (secrets revealed) and where its secrets are."""

    slug: str
    name: str
    values: dict[str, Any]
    secrets: set[str] = field(default_factory=set)  # flattened paths, e.g. "secret_options.access_key_id"
    block: Any = None

    @property
    def key(self) -> str:
        return f"{self.slug}/{self.name}"


@dataclass
class Change:
    """What applying the file does to one document."""

    key: str
    kind: str  # "new", "changed" or "unchanged"
    lines: list[str]
    wanted: Document


def block_types() -> dict[str, type]:
    """Block type slug -> labpipe block class."""
    from labpipe.deployments.platform import block_classes

    return {cls.get_block_type_slug(): cls for cls in block_classes()}


# --- reading documents -------------------------------------------------------------------------------------


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        items = {f"{prefix}.{k}" if prefix else str(k): v for k, v in value.items()}
    elif isinstance(value, list) and value:
        items = {f"{prefix}[{i}]": v for i, v in enumerate(value)}
    else:
        return {prefix: value}
    flat: dict[str, Any] = {}
    for path, item in items.items():
        flat |= _flatten(item, path)
    return flat


def _secret_paths(value: Any, prefix: str = "") -> set[str]:
    from pydantic import SecretBytes, SecretStr

    if isinstance(value, SecretStr | SecretBytes):
        return {prefix}
    if isinstance(value, dict):
        return set().union(*(_secret_paths(v, f"{prefix}.{k}" if prefix else str(k)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return set().union(*(_secret_paths(v, f"{prefix}[{i}]") for i, v in enumerate(value)))
    return set()


def document_of(slug: str, name: str, block: Any) -> Document:
    """A block instance as plain data: what is saved and compared (model fields only, secrets revealed)."""
    fields = set(type(block).model_fields)
    revealed = block.model_dump(mode="json", include=fields, context={"include_secrets": True})
    values = {k: v for k, v in revealed.items() if k in fields}
    secrets = _secret_paths(block.model_dump(mode="python", include=fields))
    return Document(slug, name, values, secrets, block)


def documents_of_type(client, slug: str, *, offset: int = 0, limit: int = _PAGE, include_secrets: bool = False):
    """One page of the block documents of type ``slug`` (none when the type was never registered on the server)."""
    from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

    try:
        return client.read_block_documents_by_type(slug, offset=offset, limit=limit, include_secrets=include_secrets)
    except ObjectNotFound:  # the asynchronous client
        return []
    except PrefectHTTPStatusError as exc:  # the synchronous client
        if exc.response.status_code == 404:
            return []
        raise


def read_server(types: dict[str, type] | None = None) -> dict[str, Document]:
    """Every named document of every labpipe block type on the server, by ``slug/name``."""
    from prefect.client.orchestration import get_client
    from pydantic import ValidationError

    types = types if types is not None else block_types()
    documents: dict[str, Document] = {}
    with get_client(sync_client=True) as client:
        for slug, cls in sorted(types.items()):
            offset = 0
            while True:
                page = documents_of_type(client, slug, offset=offset, include_secrets=True)
                for stored in page:
                    if stored.is_anonymous or not stored.name:
                        continue
                    try:
                        block = cls.model_validate(stored.data)
                    except ValidationError as exc:
                        raise ConfigError(
                            f"{slug}/{stored.name}",
                            f"the server's document does not fit labpipe's {cls.__name__}: {_first_error(exc)}",
                            "correct it in the Prefect UI, or apply a file with a corrected document",
                        ) from exc
                    document = document_of(slug, stored.name, block)
                    documents[document.key] = document
                if len(page) < _PAGE:
                    break
                offset += _PAGE
    return documents


# --- export ------------------------------------------------------------------------------------------------


def secret_env_name(slug: str, name: str, path: str) -> str:
    """LABPIPE_SECRET_<TYPE>_<DOCUMENT>_<FIELD PATH>, e.g. LABPIPE_SECRET_BORG_REPOSITORY_DEFAULT_PASSPHRASE."""
    words = f"{slug.removeprefix('labpipe-')}_{name}_{path}"
    return SECRET_ENV_PREFIX + re.sub(r"[^A-Za-z0-9]+", "_", words).strip("_").upper()


def _with_refs(value: Any, prefix: str, document: Document, refs: dict[str, str]) -> Any:
    if prefix in document.secrets and value is not None:
        env = secret_env_name(document.slug, document.name, prefix)
        if env in refs:
            raise ConfigError(
                f"{document.key}: {prefix}",
                f"its secret would share the environment variable {env} with {refs[env]}",
                "rename one of the documents, or export with --include-secrets",
            )
        refs[env] = f"{document.key}: {prefix}"
        return EnvRef(env)
    if isinstance(value, dict):
        return {k: _with_refs(v, f"{prefix}.{k}" if prefix else str(k), document, refs) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_refs(v, f"{prefix}[{i}]", document, refs) for i, v in enumerate(value)]
    return value


@dataclass
class Export:
    text: str
    documents: int
    secret_refs: dict[str, str]  # environment variable -> "slug/name: field"
    secrets_included: int


def export_config(documents: dict[str, Document], *, include_secrets: bool = False) -> Export:
    """The YAML text of ``documents``; secrets as ``!env`` references unless ``include_secrets``."""
    refs: dict[str, str] = {}
    blocks: dict[str, dict[str, Any]] = {}
    included = 0
    for key in sorted(documents):
        document = documents[key]
        values = document.values if include_secrets else _with_refs(document.values, "", document, refs)
        included += len(document.secrets) if include_secrets else 0
        blocks.setdefault(document.slug, {})[document.name] = values
    if include_secrets:
        header = "# Secret fields are in clear text (exported with --include-secrets): keep this file private.\n"
    else:
        header = "# Secret fields are `!env NAME`: `apply` reads each from that environment variable.\n"
    text = (
        "# labpipe configuration: every labpipe block document (`labpipe config export`).\n"
        "# `labpipe config apply FILE --dry-run` shows what applying it would change; `apply` saves it.\n"
        + header
        + yaml.dump(
            {"labpipe_config": FORMAT_VERSION, "blocks": blocks},
            Dumper=_Dumper,
            sort_keys=False,
            default_flow_style=False,
            allow_unicode=True,
            width=120,
        )
    )
    return Export(text, len(documents), refs, included)


# --- apply -------------------------------------------------------------------------------------------------


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", lambda: [])()
    if not errors:
        return str(exc)
    first = errors[0]
    return f"{'.'.join(str(p) for p in first['loc']) or '(document)'}: {first['msg']}"


def _resolve_refs(value: Any, path: str, key: str, problems: list[str], environ: dict[str, str]) -> Any:
    if isinstance(value, EnvRef):
        if value.name not in environ:
            problems.append(f"{key}: {path}: the environment variable {value.name} is not set")
            return None
        return environ[value.name]
    if isinstance(value, dict):
        return {
            k: _resolve_refs(v, f"{path}.{k}" if path else str(k), key, problems, environ) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_resolve_refs(v, f"{path}[{i}]", key, problems, environ) for i, v in enumerate(value)]
    return value


def _unknown_fields(given: Any, known: Any, path: str = "") -> list[str]:
    """Paths present in the file but absent from the validated document (typos, fields that do not exist)."""
    if isinstance(given, dict) and isinstance(known, dict):
        unknown = []
        for k, v in given.items():
            sub = f"{path}.{k}" if path else str(k)
            unknown += [sub] if k not in known else _unknown_fields(v, known[k], sub)
        return unknown
    if isinstance(given, list) and isinstance(known, list):
        return [
            u for i, (g, k) in enumerate(zip(given, known, strict=False)) for u in _unknown_fields(g, k, f"{path}[{i}]")
        ]
    return []


def _load_yaml(text: str, source: str) -> dict[str, Any]:
    """The file's ``blocks`` mapping, after checking its form and format version."""
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass with one added tag
    except yaml.YAMLError as exc:
        raise ConfigError(source, f"is not valid YAML: {exc}", "fix the syntax at the line named") from exc
    if not isinstance(data, dict) or not isinstance(data.get("blocks"), dict):
        raise ConfigError(source, "has no `blocks:` mapping", "start from `labpipe config export FILE`")
    if data.get("labpipe_config") != FORMAT_VERSION:
        raise ConfigError(
            source, f"labpipe_config is {data.get('labpipe_config')!r}, this labpipe reads {FORMAT_VERSION}"
        )
    return data["blocks"]


def _validated(cls: type, slug: str, name: object, fields: object, environ: dict[str, str]) -> Document | list[str]:
    """One document of the file as its block class reads it, or the problems that stop it."""
    from prefect.types.names import BlockDocumentName
    from pydantic import TypeAdapter, ValidationError

    key = f"{slug}/{name}"
    try:
        TypeAdapter(BlockDocumentName).validate_python(str(name))
    except ValidationError as exc:
        return [f"{key}: not a valid block document name: {_first_error(exc)}"]
    if not isinstance(fields, dict):
        return [f"{key}: expected a mapping of field -> value"]
    problems: list[str] = []
    resolved = _resolve_refs(fields, "", key, problems, environ)
    try:
        block = cls.model_validate(resolved)
    except ValidationError as exc:
        for error in exc.errors():
            problems.append(f"{key}: {'.'.join(str(p) for p in error['loc']) or '(document)'}: {error['msg']}")
        return problems + [f"{key}: {k}: no such field" for k in resolved if k not in cls.model_fields]
    document = document_of(slug, str(name), block)
    problems += [f"{key}: {path}: no such field" for path in _unknown_fields(resolved, document.values)]
    return problems or document


def parse_config(text: str, source: str, environ: dict[str, str] | None = None) -> dict[str, Document]:
    """Every document of a config file, validated against its block class; raises ``ConfigError`` listing
    every problem (unknown block types, bad names, unknown fields, wrong types, unset secret variables)."""
    environ = dict(os.environ) if environ is None else environ
    types = block_types()
    problems: list[str] = []
    documents: dict[str, Document] = {}
    for slug, by_name in _load_yaml(text, source).items():
        if slug not in types:
            problems.append(f"{slug}: not a labpipe block type (known: {', '.join(sorted(types))})")
        elif not isinstance(by_name, dict):
            problems.append(f"{slug}: expected a mapping of document name -> fields")
        else:
            for name, fields in by_name.items():
                outcome = _validated(types[slug], slug, name, fields, environ)
                if isinstance(outcome, Document):
                    documents[outcome.key] = outcome
                else:
                    problems += outcome
    if problems:
        listing = "\n".join(f"  {p}" for p in problems)
        raise ConfigError(
            source,
            f"refused, nothing was saved ({len(problems)} problem{'s' * (len(problems) > 1)}):\n{listing}",
            "correct the file and run again; `labpipe config apply FILE --dry-run` checks without saving",
        )
    return documents


def _shown(value: Any) -> str:
    return json.dumps(value, default=str)


def plan_changes(wanted: dict[str, Document], current: dict[str, Document]) -> list[Change]:
    """Per document of the file: new, changed (with one line per changed field) or unchanged."""
    changes = []
    for key in sorted(wanted):
        new = wanted[key]
        old = current.get(key)
        if old is None:
            lines = [
                f"+ {path}: {'(secret)' if path in new.secrets else _shown(value)}"
                for path, value in _flatten(new.values).items()
            ]
            changes.append(Change(key, "new", lines, new))
            continue
        before, after = _flatten(old.values), _flatten(new.values)
        lines = []
        for path in sorted(set(before) | set(after)):
            if before.get(path, ...) == after.get(path, ...):
                continue
            if path in new.secrets or path in old.secrets:
                lines.append(f"~ {path}: (secret changed)")
            elif path not in before:
                lines.append(f"+ {path}: {_shown(after[path])}")
            elif path not in after:
                lines.append(f"- {path}: {_shown(before[path])}")
            else:
                lines.append(f"~ {path}: {_shown(before[path])} -> {_shown(after[path])}")
        changes.append(Change(key, "changed" if lines else "unchanged", lines, new))
    return changes


def save_changes(changes: list[Change]) -> list[str]:
    """Save every new or changed document; returns their keys."""
    saved = []
    for change in changes:
        if change.kind != "unchanged":
            change.wanted.block.save(change.wanted.name, overwrite=True)
            saved.append(change.key)
    return saved


def read_file(path: Path) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise ConfigError(path, f"cannot be read: {exc.strerror or exc}", "give the path of an exported file") from exc
