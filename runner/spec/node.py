"""The frozen result of validation: a TrainingJob whose spec reads as attributes
(`job.spec.training.batchSize`) and cannot be changed."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


def freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return Node({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
    return value


class Node:
    """Read-only attribute view of a validated mapping: `job.spec.training.batchSize`.
    Absent optional fields read as None."""

    __slots__ = ("_data",)

    def __init__(self, data: dict[str, Any]):
        object.__setattr__(self, "_data", MappingProxyType(data))

    def __getattr__(self, name: str) -> Any:
        try:
            return self._data[name]
        except KeyError:
            if name.startswith("__"):
                raise AttributeError(name) from None
            return None

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
