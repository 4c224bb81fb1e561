"""JSON round trips for the frozen dataclasses that carry measurements and plans.

Every probe result, plan and run summary is a ``@dataclass(frozen=True)`` that mixes
in :class:`Record`. ``Record.from_dict(r.to_dict()) == r`` holds for fields typed as
``int``, ``float``, ``str``, ``bool``, ``None``, nested ``Record`` dataclasses,
``tuple[X, ...]``, ``X | None`` and ``dict[str, X]`` (the types the records use).
Tuples are written as JSON lists and read back as tuples, so records stay hashable
and comparable.

This module is a leaf: it imports nothing from ``probes``, ``trainers`` or the
planner, so all three can use it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T", bound="Record")


class RecordError(ValueError):
    """A JSON document does not match the record type it is read as."""


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, float) and value != value:  # NaN is not JSON
        return None
    return value


def _decode(tp: Any, value: Any, where: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _decode(arg, value, where)
            except (RecordError, TypeError, ValueError) as exc:
                errors.append(str(exc))
        raise RecordError(f"{where}: {value!r} matches none of {args}: {errors}")
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise RecordError(f"{where}: expected a list, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise RecordError(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(_decode(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin in (dict, typing.Mapping) or tp is dict:
        if not isinstance(value, dict):
            raise RecordError(f"{where}: expected an object, got {type(value).__name__}")
        args = get_args(tp)
        vt = args[1] if len(args) == 2 else Any
        return {k: _decode(vt, v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise RecordError(f"{where}: expected an object for {tp.__name__}")
        return _from_dict(tp, value, where)
    if tp is float:
        if value is None:
            return float("nan")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecordError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecordError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise RecordError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise RecordError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is type(None):
        if value is not None:
            raise RecordError(f"{where}: expected null, got {value!r}")
        return None
    return value


def _current_names(cls: type, data: dict, names: set[str]) -> dict:
    """``data`` with the keys of older versions of ``cls`` renamed: the class's
    ``RENAMED`` map (old -> new), and times spelled ``*_seconds`` / ``*_secs`` before
    the vocabulary settled on ``*_s``; fields the class no longer has (its ``DROPPED``
    names) are left out."""
    renamed = dict(getattr(cls, "RENAMED", {}))
    dropped = set(getattr(cls, "DROPPED", ()))
    out = {}
    for key, value in data.items():
        if key in dropped:
            continue
        new = renamed.get(key, key)
        if new not in names:
            for suffix in ("_seconds", "_secs"):
                if key.endswith(suffix) and key[:-len(suffix)] + "_s" in names:
                    new = key[:-len(suffix)] + "_s"
        if new in out and new != key:
            continue  # both spellings present: the current one wins
        out[new] = value
    return out


def _from_dict(cls: type, data: dict, where: str) -> Any:
    hints = get_type_hints(cls)
    kwargs = {}
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    data = _current_names(cls, data, names)
    unknown = set(data) - names
    if unknown:
        raise RecordError(f"{where or cls.__name__}: unknown fields {sorted(unknown)}")
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise RecordError(f"{where or cls.__name__}: missing field {f.name!r}")
            continue
        kwargs[f.name] = _decode(hints[f.name], data[f.name], f"{where or cls.__name__}.{f.name}")
    return cls(**kwargs)


class Record:
    """Mixin for frozen dataclasses: ``to_dict`` / ``from_dict`` / ``to_json`` /
    ``from_json`` / ``save`` / ``load``.

    A record whose fields were renamed lists the old names in a class attribute
    ``RENAMED = {"old": "new"}``, and one that lost fields lists them in ``DROPPED``,
    so that files written before still load.

    Raises:
      RecordError: from the readers, when the document has a missing or unknown field or
        a value of the wrong type; the message names the field path.
    """

    def to_dict(self) -> dict:
        """The record as plain JSON-compatible Python values (tuples become lists)."""
        return _encode(self)

    @classmethod
    def from_dict(cls: type[T], data: dict) -> T:
        """Rebuild the record from :meth:`to_dict` output."""
        return _from_dict(cls, data, cls.__name__)

    def to_json(self, indent: int | None = 2) -> str:
        """The record as a JSON document."""
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    @classmethod
    def from_json(cls: type[T], text: str) -> T:
        """Parse a JSON document written by :meth:`to_json`."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecordError(f"not valid JSON for {cls.__name__}: {exc}") from exc
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the record as JSON to ``path`` atomically (write a temporary file, then
        rename), so a reader never sees half a file. Returns the path."""
        return write_text_atomic(path, self.to_json() + "\n")

    @classmethod
    def load(cls: type[T], path: str | os.PathLike) -> T:
        """Read a record saved with :meth:`save`.

        Raises:
          FileNotFoundError: no file at ``path``.
          RecordError: the file is not a valid record of this type (names the file).
        """
        path = Path(path)
        try:
            return cls.from_json(path.read_text())
        except RecordError as exc:
            raise RecordError(f"{path}: {exc}") from exc


def write_text_atomic(path: str | os.PathLike, text: str, durable: bool = True) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and an
    atomic rename; the previous file stays intact if writing fails (disk full).
    ``durable``: the temporary file is fsynced before the rename, so after a power
    loss ``path`` holds the old text or the new one; without it (one disk flush
    fewer) it may also be empty or cut short, for files whose readers treat that as
    missing.

    Raises:
      OSError: the write failed; the message names the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path
