"""A configuration file as plain data: YAML read safely (integers remember how they were written, so
an id `0012345` keeps its zeros), `${ENV}` / `${ENV:-default}` substituted in string values, and the
error type whose lines name each bad key by its dotted path, secret values never shown.

The collector's schema (`collector.config`) and the simulator's own reading of a configuration
(`collector.simulator.settings`) both start here; this module knows nothing of either schema.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from collector.logs import redact_url

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """A configuration that cannot be used. `problems` are `path: reason` lines."""

    def __init__(self, problems: list[str], source: str = "") -> None:
        self.problems = problems
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(where + "invalid configuration\n  " + "\n  ".join(problems))


class SettingError(ConfigError):
    """One problem the operator fixes in one setting or on the host, said in one line that names the
    setting (`http.port: 127.0.0.1:9108 is in use`): start-up failures, an empty file. Exit code 2 like
    any ConfigError, and never a traceback."""

    def __init__(self, problem: str, source: str = "") -> None:
        super().__init__([problem], source)
        self.args = ((f"{source}: " if source else "") + problem,)

    def __str__(self) -> str:
        return str(self.args[0])


class _Int(int):
    """A YAML integer that remembers how it was written, so `- 0012345` stays the id "0012345"."""

    source: str


class _Loader(yaml.SafeLoader):
    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        value = _Int(super().construct_yaml_int(node))
        value.source = str(node.value)
        return value


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


def yaml_load(text: str) -> Any:
    """YAML as plain data (safe loading), integers remembering their source text for ids."""
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: no arbitrary objects


def read_yaml_file(path: str | os.PathLike[str]) -> Any:
    """A YAML file as plain data. Raises ConfigError (unreadable, or not YAML: with line and column)."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read: {exc.strerror}"], source) from None
    try:
        return yaml_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError([f"{where}not valid YAML ({getattr(exc, 'problem', exc)})"], source) from None


def id_text(value: Any) -> Any:
    """An id given as a YAML number, back as the text the operator typed."""
    if isinstance(value, bool):
        return value
    if isinstance(value, _Int):
        return value.source.replace("_", "")
    if isinstance(value, int):
        return str(value)
    return value


def substitute_env(value: Any, path: str, env: dict[str, str], problems: list[str]) -> Any:
    """`value` with `${NAME}` / `${NAME:-default}` replaced in every string; an unset variable without
    a default is a problem line naming the key (`path`)."""
    if isinstance(value, dict):
        return {k: substitute_env(v, f"{path}.{k}" if path else str(k), env, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_env(v, f"{path}[{i}]", env, problems) for i, v in enumerate(value)]
    if isinstance(value, str) and "${" in value:
        def repl(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            problems.append(f"{path}: environment variable {name} is not set")
            return ""
        return _ENV.sub(repl, value)
    return value


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not part.startswith(("function-", "model-")) and part not in ("", "[key]"):
            out += f".{part}" if out else part
    return out or "(top level)"


_SECRET_WORDS = ("secret", "token", "password", "pass")


def _describe(error: Any, prefix: str) -> str:
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    loc = _format_loc(error["loc"])
    if prefix:
        loc = prefix if loc == "(top level)" else f"{prefix}.{loc}"
    shown = "<redacted>" if any(w in loc.lower() for w in _SECRET_WORDS) else redact_url(repr(value))
    if kind == "extra_forbidden":
        return f"{loc}: unknown key"
    if kind == "missing":
        return f"{loc}: required"
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
    if kind in bounds:
        limit = next(iter(ctx.values()))
        if isinstance(limit, float) and limit.is_integer():
            limit = int(limit)
        return f"{loc}: must be {bounds[kind]} {limit}, got {shown}"
    if kind == "value_error":
        return f"{loc}: {redact_url(error['msg'].removeprefix('Value error, '))}"
    if kind in ("literal_error", "enum"):
        return f"{loc}: must be {ctx.get('expected')}, got {shown}"
    return f"{loc}: {redact_url(error['msg'][0].lower() + error['msg'][1:])}, got {shown}"


def validation_problems(exc: ValidationError, prefix: str = "") -> list[str]:
    """pydantic's errors as `dotted.path: reason` lines (under `prefix`, when the model validated one
    section of a file), secret values never shown."""
    return [_describe(e, prefix) for e in exc.errors(include_url=False)]
