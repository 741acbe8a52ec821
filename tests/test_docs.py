"""The configuration reference names every key of the schema."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from collector.config import Config

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        out.append(path)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel) and name != "alerts":
            out.extend(keys(ann, path + "."))
    return out


def test_every_configuration_key_is_documented() -> None:
    text = DOC.read_text()
    documented = set(re.findall(r"(?:^\s*|[{,]\s*)([a-z_0-9]+):", text, flags=re.M))
    missing = [k for k in keys(Config) if k.rsplit(".", 1)[-1] not in documented]
    assert not missing, f"keys missing from docs/configuration.md: {missing}"
