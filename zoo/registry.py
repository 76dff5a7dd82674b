"""A small generic registry: named items, duplicates refused, close matches listed on a miss."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from zoo.errors import DuplicateNameError, UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to items. `kind` names what is kept ("model", "recipe config"...) in error messages."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        if name in self._items:
            raise DuplicateNameError(f"{self.kind} {name!r} is already registered")
        self._items[name] = item
        return item

    def decorator(self, name: str) -> Callable[[T], T]:
        """`@registry.decorator("name")` registers the decorated object under `name`."""
        return lambda item: self.register(name, item)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self._items) from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())


def class_key(cls: type) -> str:
    """The name a class is registered under in a per-class registry: its module and qualified name."""
    return f"{cls.__module__}.{cls.__qualname__}"


def register_for_class(registry: Registry[T], cls: type, item: T) -> T:
    """Registers `item` for `cls` and, through `lookup_by_class`, its subclasses."""
    return registry.register(class_key(cls), item)


def lookup_by_class(registry: Registry[T], obj: object) -> T | None:
    """The item registered for `obj`'s class or its nearest registered base class, None when none is."""
    for cls in type(obj).__mro__:
        if class_key(cls) in registry:
            return registry.get(class_key(cls))
    return None
