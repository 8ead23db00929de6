"""The frozen result of validation: a TrainingJob whose spec reads as attributes
(`job.spec.training.batchSize`) and cannot be changed."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from runner.spec.errors import did_you_mean
from runner.spec.plan import exported_document


def freeze(value: Any, path: str = "", schema: dict[str, Any] | None = None) -> Any:
    """Mappings become Nodes and lists tuples, all the way down. `schema` is the value's
    schema node: it tells each Node which names are fields (so an absent optional field reads
    as None and a misspelt one raises)."""
    from runner.spec.schema import element

    schema = schema or {}
    if isinstance(value, dict):
        props = schema.get("properties", {})
        fields = frozenset(props) if props else None
        return Node({k: freeze(v, f"{path}.{k}" if path else k, props.get(k)) for k, v in value.items()},
                    path, fields)
    if isinstance(value, list):
        items = element(schema)
        return tuple(freeze(v, f"{path}[{i}]", items) for i, v in enumerate(value))
    return value


class Node:
    """Read-only attribute view of a validated mapping: `job.spec.training.batchSize`.

    An optional field the spec leaves out (and the schema gives no default) reads as None. A
    name the schema does not have raises AttributeError naming the path, so a typo in code
    fails where it is made instead of reading as None."""

    __slots__ = ("_data", "_path", "_fields")

    def __init__(self, data: dict[str, Any], path: str = "", fields: frozenset[str] | None = None):
        object.__setattr__(self, "_data", MappingProxyType(data))
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_fields", fields)  # None: a free-form map, only its keys exist

    def __getattr__(self, name: str) -> Any:
        try:
            return self._data[name]
        except KeyError:
            pass
        if not name.startswith("__") and self._fields is not None and name in self._fields:
            return None
        where = f"{self._path}.{name}" if self._path else name
        known = sorted(self._fields if self._fields is not None else self._data)
        raise AttributeError(f"{where}: no such field" + (did_you_mean(name, known) if known else ""))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("TrainingJob specs are frozen; use --set or edit the file")

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key, default)

    def keys(self):
        return self._data.keys()

    def to_dict(self) -> dict[str, Any]:
        return {k: _thaw(v) for k, v in self._data.items()}

    def __repr__(self) -> str:
        return f"Node({self.to_dict()!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Node) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True, default=str))


def _thaw(value: Any) -> Any:
    if isinstance(value, Node):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class TrainingJob:
    """A validated spec with every default filled in."""

    name: str
    spec: Node
    document: Node
    source: str
    warnings: tuple[str, ...] = field(default=())

    @property
    def hash(self) -> str:
        """Content hash of the effective spec (defaults included): recorded in checkpoints."""
        text = json.dumps(self.document.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def effective_yaml(self, exported: bool = False) -> bytes:
        """The effective spec as written to `trainingjob.effective.yaml`, or with `exported` to
        `model/trainingjob.yaml`, without spec.kubernetes (exported_document). It holds what the
        spec file does (the names of the env vars and Secrets that carry tokens, never their
        values) with every default filled in."""
        import yaml

        document = self.document.to_dict()
        return yaml.safe_dump(exported_document(document) if exported else document, sort_keys=False).encode()
