"""One shape for every registry (scorers, repairs, task kinds, exporters): a name -> instance map that
registers a class with a decorator and refuses an unknown name with the choices, the same way for all.

Why: four registries had four lookup shapes (a ``get_`` function, a ``dict.get`` with a default, a bare
``KINDS[name]`` KeyError, a chain parser), so adding a kind meant learning each. ``check`` is the hook a
registry uses to insist on something of its classes (a task kind's profile entry)."""
from __future__ import annotations

from typing import Callable, Generic, Optional, TypeVar

from compressor.errors import BadInput

T = TypeVar("T")


class Registry(dict[str, T], Generic[T]):
    """``name -> instance``, in registration order. ``what``: how a message names a key (``--method``),
    ``check(cls)``: called on every class registered."""

    def __init__(self, what: str, check: Optional[Callable[[type], None]] = None):
        super().__init__()
        self.what = what
        self._check = check

    def register(self, cls: type[T]) -> type[T]:
        """The decorator: ``@REGISTRY.register`` on a class with a ``name``, instantiated once."""
        if self._check is not None:
            self._check(cls)
        self[str(cls.name)] = cls()  # type: ignore[attr-defined]  # every registered class has a name
        return cls

    def copy(self) -> Registry[T]:
        """A registry with the same entries and rules (a test registers into it, then restores the original)."""
        out: Registry[T] = Registry(self.what, self._check)
        out.update(self)
        return out

    def find(self, name: str) -> T:
        """The entry called ``name``; an unknown name is bad input naming the choices."""
        if name not in self:
            raise BadInput(f"unknown {self.what} {name!r}", f"use one of: {', '.join(self)}")
        return self[name]
