"""Block pickers in the Prefect UI's run forms: each ``*_block`` parameter offers the saved documents of its type.

Flows take block *names* (``layout_block: str | None = "default"``), so that the command line, notebooks and
triggers pass a plain string. The run form of a deployment would show a free-text box; instead, ``labpipe up``
and ``labpipe config apply`` write the names of the saved documents of the parameter's block type as an
``enum`` into the string member of that parameter's schema (``anyOf: [{type: string, enum: [...]}, {type:
null}]``), which the UI renders as a drop-down beside its ``str``/``None`` switch.

The block type of a parameter is not written down a second time: it is traced from the flow's code to the
loader it calls, down to the one ``labpipe.blocks.resolve.resolve(BlockClass, name, builtin)`` that names the
block class (``flow -> task or helper -> loader -> resolve``, following the argument the name is passed as).

Prefect's own block-typed parameters (a ``$ref`` to the block's schema; the UI's block-document selector) were
weighed and not used: the run receives the loaded block, not its name, so every flow signature would change to
a Block type and the CLI, notebooks and triggers that pass names would break.

The server enforces a deployment's parameter schema when a run is created from it: a name outside the list is
refused there (409, naming the choices). The list is refreshed whenever labpipe saves documents; a document
saved by other means (the UI's Blocks page, ``Block.save`` in a notebook) joins it at the next ``labpipe up``
or ``labpipe config pickers``. Flows called from Python, and the ``labpipe`` commands, take any name.
"""

from __future__ import annotations

import ast
import copy
import importlib
import importlib.util
import inspect
import textwrap
from collections.abc import Callable
from functools import cache
from typing import Any

from labpipe.blocks.resolve import DEFAULT, resolve

BLOCK_SUFFIX = "_block"
_MAX_DEPTH = 6  # flow -> task -> helper -> loader -> loader -> resolve is the deepest path today


def _function(obj: Any) -> Callable | None:
    """The Python function behind a flow, a task or a decorated function (None for a class, a builtin, ...)."""
    fn = inspect.unwrap(getattr(obj, "fn", obj))
    return fn if inspect.isfunction(fn) else None


def _lookup(node: ast.expr, namespace: dict[str, Any]) -> Any:
    """The object a name or dotted attribute in the function's source refers to (None if it is not static)."""
    if isinstance(node, ast.Name):
        return namespace.get(node.id)
    if isinstance(node, ast.Attribute):
        base = _lookup(node.value, namespace)
        return getattr(base, node.attr, None) if base is not None else None
    return None


_ALL_LOCALS = "locals"


def _is_locals(node: ast.expr) -> bool:
    """``locals()`` or ``dict(locals())``: every parameter, by its own name."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        if node.func.id == "locals":
            return True
        return node.func.id == "dict" and len(node.args) == 1 and _is_locals(node.args[0])
    return False


def _keyword_dicts(tree: ast.AST) -> dict[str, list[ast.keyword] | str]:
    """Local ``x = dict(a=..., b=...)`` (or ``dict(locals())``) assignments: what a later ``f(**x)`` passes."""
    dicts: dict[str, list[ast.keyword] | str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            value = node.value
            if _is_locals(value):
                dicts[node.targets[0].id] = _ALL_LOCALS
            elif isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "dict":
                dicts[node.targets[0].id] = value.keywords
    return dicts


def _passed(call: ast.Call, names: set[str], dicts: dict[str, list[ast.keyword] | str]) -> dict[int | str, str]:
    """Which of ``names`` the call passes on, by position or keyword: {position or keyword: name}."""
    passed: dict[int | str, str] = {
        i: arg.id for i, arg in enumerate(call.args) if isinstance(arg, ast.Name) and arg.id in names
    }
    keywords = [kw for kw in call.keywords if kw.arg]
    for splat in (kw.value for kw in call.keywords if kw.arg is None):  # f(**blocks), f(**dict(locals()))
        spread = dicts.get(splat.id) if isinstance(splat, ast.Name) else (_ALL_LOCALS if _is_locals(splat) else None)
        if spread == _ALL_LOCALS:
            passed.update({name: name for name in names})
        elif spread:
            keywords += spread
    passed.update({kw.arg: kw.value.id for kw in keywords if isinstance(kw.value, ast.Name) and kw.value.id in names})
    return passed


def _parameter_names(fn: Callable, passed: dict[int | str, str]) -> dict[str, str]:
    """{callee's parameter name: caller's name} for the arguments ``passed`` (by position or keyword)."""
    params = list(inspect.signature(fn).parameters)
    mapped = {}
    for where, name in passed.items():
        if isinstance(where, int):
            if where < len(params):
                mapped[params[where]] = name
        elif where in params:
            mapped[where] = name
    return mapped


def _traced(fn: Callable, names: frozenset[str], depth: int = 0) -> dict[str, type]:
    """{name in ``names``: block class} for the names that reach ``resolve`` through the calls in ``fn``."""
    if depth > _MAX_DEPTH or not names:
        return {}
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return {}
    namespace = {**fn.__globals__, **inspect.getclosurevars(fn).nonlocals}
    dicts = _keyword_dicts(tree)
    found: dict[str, type] = {}
    for call in (node for node in ast.walk(tree) if isinstance(node, ast.Call)):
        passed = _passed(call, set(names), dicts)
        if not passed:
            continue
        callee = _lookup(call.func, namespace)
        if callee is resolve:
            name = passed.get(1) or passed.get("name")
            block_cls = _lookup(call.args[0], namespace) if call.args else None
            if name and isinstance(block_cls, type):
                found.setdefault(name, block_cls)
            continue
        target = _function(callee)
        if target is None or not target.__module__.startswith("labpipe."):
            continue
        inner = _parameter_names(target, passed)
        for inner_name, block_cls in _traced(target, frozenset(inner), depth + 1).items():
            found.setdefault(inner[inner_name], block_cls)
    return found


@cache
def block_parameters(entrypoint: str) -> dict[str, type]:
    """{``*_block`` parameter: block class} of the flow at ``entrypoint`` (``flows/ingest.py:ingest``)."""
    path, _, attr = entrypoint.partition(":")
    name = "labpipe." + path.removesuffix(".py").replace("/", ".")
    if importlib.util.find_spec(name) is None:  # another project's deployment on the lab's server
        return {}
    fn = _function(getattr(importlib.import_module(name), attr, None))
    if fn is None:
        return {}
    names = frozenset(p for p in inspect.signature(fn).parameters if p.endswith(BLOCK_SUFFIX))
    return _traced(fn, names)


def with_choices(schema: dict, choices: dict[str, list[str]]) -> dict:
    """``schema`` (a deployment's parameter schema) with ``enum`` choices on the string member of each parameter."""
    schema = copy.deepcopy(schema)
    for name, names in choices.items():
        prop = schema.get("properties", {}).get(name)
        if prop is None:
            continue
        members = prop.get("anyOf") or [prop]
        for member in members:
            if member.get("type") == "string":
                member["enum"] = names
    return schema


def document_names(client, block_cls: type) -> list[str]:
    """Names of the saved (named) documents of ``block_cls``'s type, ``default`` first (none: type not registered)."""
    from labpipe.deployments.config import documents_of_type

    documents = documents_of_type(client, block_cls.get_block_type_slug())
    return sorted({d.name for d in documents if d.name and not d.is_anonymous}, key=lambda n: (n != DEFAULT, n))


def deployment_choices(deployment, names_of: Callable[[type], list[str]]) -> dict[str, list[str]]:
    """{``*_block`` parameter: the names its picker offers} for one deployment.

    ``default`` is always offered (it loads the saved document, or the built-in defaults when none is
    saved), and so is a name the deployment itself sets as the parameter's value.
    """
    choices = {}
    for name, block_cls in block_parameters(deployment.entrypoint).items():
        offered = [DEFAULT, *names_of(block_cls)]
        if isinstance(given := deployment.parameters.get(name), str):
            offered.append(given)
        choices[name] = list(dict.fromkeys(offered))
    return choices


def refresh_pickers(client) -> dict[str, dict[str, list[str]]]:
    """Write the current choices into every labpipe deployment's schema; returns {deployment id: choices}."""
    from prefect.client.schemas.actions import DeploymentUpdate

    names_of = cache(lambda block_cls: document_names(client, block_cls))
    refreshed = {}
    for deployment in client.read_deployments():
        if not (deployment.entrypoint or "").startswith("flows/") or not deployment.parameter_openapi_schema:
            continue
        choices = deployment_choices(deployment, names_of)
        schema = with_choices(deployment.parameter_openapi_schema, choices)
        if schema != deployment.parameter_openapi_schema:
            client.update_deployment(deployment.id, DeploymentUpdate(parameter_openapi_schema=schema))
        refreshed[str(deployment.id)] = choices
    return refreshed


def refresh_on_server() -> int:
    """``refresh_pickers`` on the configured Prefect server, after saving documents; returns how many deployments
    have a block picker."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return sum(bool(choices) for choices in refresh_pickers(client).values())
