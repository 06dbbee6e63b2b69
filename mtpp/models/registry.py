"""Registries of model parts, filled by decorators in the modules that define the parts.

``mtpp.models`` imports those modules, so ``build_model`` sees every part; nothing scans subclasses.
"""

from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

from mtpp.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise RuntimeError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            valid = ", ".join(sorted(self._items))
            raise ConfigError(f"unknown {self.kind} {name!r}; valid: {valid}") from None

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.get(name)(*args, **kwargs)  # type: ignore[operator]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items


ENCODERS: Registry = Registry("encoder")
TIME_DECODERS: Registry = Registry("time decoder")
JOINT_DECODERS: Registry = Registry("joint decoder")
MARK_DECODERS: Registry = Registry("mark decoder")
