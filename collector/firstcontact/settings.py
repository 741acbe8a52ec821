"""The `platform` settings a probe discovered, applied to a configuration: to the validated
`PlatformConfig` (to poll with them at once) and to the configuration file's text
(`probe --write-config OUT`).

The file is rewritten from its YAML as written, before `${ENV}` substitution and before secrets are
read, so `${APP_SECRET}`, `app_secret_file:` and `app_secret_credential:` stay references and no
secret a reference points to is ever written. Only the `platform:` section is rewritten: every
other line of the file, comments included, is kept as it was; comments inside `platform:` are lost
(re-emitting YAML with its comments needs a round-trip parser we do not depend on). When the
section cannot be located as a block of lines (a flow-style document), the whole file is
re-emitted without comments, and the caller is told.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from collector.config import EndpointOverride, PlatformConfig, SignConfig, yaml_load

if TYPE_CHECKING:
    from collector.firstcontact.probe import ProbeReport


@dataclass
class Discovered:
    """What a probe found that differs from the configuration: the sign recipe, endpoint paths and
    parameters, field-name overrides, the flow unit. Empty means nothing to change."""

    sign: SignConfig | None = None
    endpoints: dict[str, dict[str, str]] = field(default_factory=dict)
    fields: dict[str, dict[str, str]] = field(default_factory=dict)
    flow_unit: str | None = None

    def __bool__(self) -> bool:
        return bool(self.sign or self.endpoints or self.fields or self.flow_unit)

    def settings(self) -> dict[str, Any]:
        """The changes as the `platform` keys of a configuration file."""
        out: dict[str, Any] = {}
        if self.sign is not None:
            out["sign"] = {"hash": self.sign.hash, "template": self.sign.template, "case": self.sign.case,
                           "timestamp": self.sign.timestamp}
        if self.endpoints:
            out["endpoints"] = {name: dict(values) for name, values in self.endpoints.items()}
        if self.fields:
            out["fields"] = {name: dict(values) for name, values in self.fields.items()}
        if self.flow_unit is not None:
            out["flow_unit"] = self.flow_unit
        return out


def apply(platform: PlatformConfig, found: Discovered) -> PlatformConfig:
    """`platform` with the discovered settings in force."""
    update: dict[str, Any] = {}
    if found.sign is not None:
        update["sign"] = found.sign
    if found.endpoints:
        endpoints = dict(platform.endpoints)
        for name, values in found.endpoints.items():
            base = endpoints.get(name, EndpointOverride())
            endpoints[name] = base.model_copy(update=dict(values))
        update["endpoints"] = endpoints
    if found.fields:
        update["fields"] = _merge_fields(platform.fields, found.fields)
    if found.flow_unit is not None:
        update["flow_unit"] = found.flow_unit
    return platform.model_copy(update=update)


def _merge_fields(old: Mapping[str, Mapping[str, str]],
                  new: Mapping[str, Mapping[str, str]]) -> dict[str, dict[str, str]]:
    merged = {name: dict(values) for name, values in old.items()}
    for name, values in new.items():
        merged.setdefault(name, {}).update(values)
    return merged


def _merge_platform(raw: Any, found: Discovered) -> dict[str, Any]:
    platform: dict[str, Any] = dict(raw) if isinstance(raw, dict) else {}
    if found.sign is not None:
        sign = dict(platform.get("sign") or {}) if isinstance(platform.get("sign"), dict) else {}
        sign.update(Discovered(sign=found.sign).settings()["sign"])
        platform["sign"] = sign
    if found.endpoints:
        endpoints = dict(platform.get("endpoints") or {})
        for name, values in found.endpoints.items():
            entry = dict(endpoints.get(name) or {})
            entry.update(values)
            endpoints[name] = entry
        platform["endpoints"] = endpoints
    if found.fields:
        platform["fields"] = _merge_fields(platform.get("fields") or {}, found.fields)
    if found.flow_unit is not None:
        platform["flow_unit"] = found.flow_unit
    return platform


class _Dumper(yaml.SafeDumper):
    """Emits ids as they were written (`0012345` stays `0012345`) and mappings in their own order."""


def _represent_int(dumper: yaml.SafeDumper, value: int) -> yaml.ScalarNode:
    source = getattr(value, "source", None)
    return dumper.represent_scalar("tag:yaml.org,2002:int", source if isinstance(source, str) else str(int(value)))


_Dumper.add_multi_representer(int, _represent_int)  # bool is registered exactly and wins over this


def dump_yaml(data: Any) -> str:
    """YAML as a configuration file writes it: block style, keys in order, ids as written."""
    return yaml.dump(data, Dumper=_Dumper, default_flow_style=False, sort_keys=False, allow_unicode=True,
                     width=120)


def rewrite(text: str, found: Discovered) -> tuple[str, bool]:
    """The configuration `text` with the discovered settings in its `platform` section, and whether
    the comments outside that section were kept."""
    data = yaml_load(text)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError("the configuration is not a mapping of sections")
    platform = _merge_platform(data.get("platform"), found)
    wanted = {**data, "platform": platform}
    spliced = _splice(text, platform)
    if spliced is not None and yaml_load(spliced) == wanted:
        return spliced, True
    return dump_yaml(wanted), False


def _splice(text: str, platform: dict[str, Any]) -> str | None:
    """`text` with the lines of its top-level `platform:` entry replaced (or the section appended);
    None when the document is not a block mapping whose keys start lines."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    block = dump_yaml({"platform": platform})
    lines = text.splitlines(keepends=True)
    if root is None:
        return block
    if not isinstance(root, yaml.MappingNode) or root.flow_style:
        return None
    for index, (key, value) in enumerate(root.value):
        if not (isinstance(key, yaml.ScalarNode) and key.value == "platform"):
            continue
        if key.start_mark.column != 0:
            return None
        start = key.start_mark.line
        end = root.value[index + 1][0].start_mark.line if index + 1 < len(root.value) else len(lines)
        # Comment and blank lines just before the next key belong to it, not to platform.
        while end > start + 1 and (not lines[end - 1].strip() or lines[end - 1].lstrip().startswith("#")):
            end -= 1
        if value.end_mark.line >= end and value.end_mark.column > 0 and end != len(lines):
            return None
        return "".join(lines[:start]) + block + "".join(lines[end:])
    tail = "" if not lines or lines[-1].endswith("\n") else "\n"
    return text + tail + block


def write_config(source: Path, target: Path, report: ProbeReport) -> dict[str, Any]:
    """Write the configuration file `source` with `report`'s discovered settings to `target`
    (atomically, with the source's permissions); what happened, for the report."""
    out: dict[str, Any] = {"path": str(target), "written": False}
    if report.accepted_sign is None:
        out["reason"] = "no sign recipe was accepted, so nothing was found to write"
        return out
    try:
        text = source.read_text(encoding="utf-8")
        if report.discovered:
            text, out["comments_kept"] = rewrite(text, report.discovered)
        else:
            out["comments_kept"] = True
        temporary = target.with_name(f".{target.name}.tmp")
        temporary.write_text(text, encoding="utf-8")
        os.chmod(temporary, stat.S_IMODE(source.stat().st_mode))
        os.replace(temporary, target)
    except (OSError, ValueError) as error:
        out["reason"] = str(error)
        return out
    out["written"] = True
    if target.resolve().parent != source.resolve().parent and _has_relative_paths(text):
        report.warnings.append(f"{target} is not in the folder of {source}: relative paths in it (inventory.file, "
                               "sinks.file.path, state_dir) now resolve from its own folder")
    return out


def _has_relative_paths(text: str) -> bool:
    data = yaml_load(text) or {}
    if not isinstance(data, dict):
        return False
    candidates = [(data.get("inventory") or {}).get("file"), ((data.get("sinks") or {}).get("file") or {}).get("path"),
                  data.get("state_dir")]
    return any(isinstance(p, str) and p and not os.path.isabs(p) for p in candidates)
