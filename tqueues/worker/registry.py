"""Which functions a worker may run.

A job names a function as ``"package.module:function"``. The worker runs it only when it is
registered: marked with :func:`task` in a module the worker process has imported, added with
:meth:`Registry.add`, or defined in a module given to :meth:`Registry.add_module`
(``tqueues_worker --import MODULE``). Nothing is ever imported because a job asked for it.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import types
from typing import Any, Callable, Iterator, TypeVar, overload

from .. import models
from ..errors import ConfigurationError, NotRegistered

F = TypeVar("F", bound=Callable[..., Any])

MARK = "__tqueues_name__"


def name_of(fn: Callable[..., Any]) -> str:
    return getattr(fn, MARK, None) or f"{fn.__module__}:{fn.__qualname__}"


@overload
def task(fn: F) -> F: ...


@overload
def task(*, name: str | None = None) -> Callable[[F], F]: ...


def task(fn: Any = None, *, name: str | None = None) -> Any:
    """Mark a function as a tqueues task, runnable by any worker that imported its module.

    ``@tqueues.task`` registers it as ``"module:function"``; ``@tqueues.task(name="x")``
    under another name. The function is returned unchanged, so it can still be called directly.
    """
    def mark(func: F) -> F:
        if not callable(func):
            raise TypeError("@tqueues.task decorates functions")
        chosen = name or f"{func.__module__}:{func.__qualname__}"
        if models.METHOD_RE.match(chosen) is None and not chosen.isidentifier():
            raise ValueError(f"task name {chosen!r} is not a valid method name")
        setattr(func, MARK, chosen)
        return func

    return mark(fn) if fn is not None else mark


class Registry:
    """Registered functions of one worker, by name."""

    def __init__(self) -> None:
        self._functions: dict[str, Callable[..., Any]] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._functions

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._functions))

    def __len__(self) -> int:
        return len(self._functions)

    def add(self, fn: Callable[..., Any], name: str | None = None) -> Callable[..., Any]:
        self._functions[name or name_of(fn)] = fn
        return fn

    def add_module(self, module: str | types.ModuleType) -> list[str]:
        """Register every function defined in ``module`` (imported now) as ``module:function``."""
        if isinstance(module, str):
            try:
                module = importlib.import_module(module)
            except ImportError as exc:
                raise ConfigurationError(f"cannot import module {module!r}: {exc}") from None
        added = []
        for attr, value in vars(module).items():
            if attr.startswith("_") or not inspect.isfunction(value) or value.__module__ != module.__name__:
                continue
            for name in {f"{module.__name__}:{value.__qualname__}", name_of(value)}:
                self._functions[name] = value
                added.append(name)
        return sorted(added)

    def discover(self) -> list[str]:
        """Register every function marked with :func:`task` in the modules imported so far."""
        added = []
        for module in list(sys.modules.values()):
            namespace = getattr(module, "__dict__", None)
            if not isinstance(namespace, dict):
                continue
            for value in list(namespace.values()):
                if inspect.isfunction(value) and MARK in value.__dict__:
                    name = value.__dict__[MARK]
                    if name not in self._functions:
                        self._functions[name] = value
                        added.append(name)
        return added

    def resolve(self, method: str) -> Callable[..., Any]:
        """The function registered as ``method`` (``a.b.c`` also finds ``a.b:c``)."""
        fn = self._functions.get(method)
        if fn is None and ":" not in method and "." in method:
            module, _, attr = method.rpartition(".")
            fn = self._functions.get(f"{module}:{attr}")
        if fn is None:
            raise NotRegistered(f"method {method!r} is not registered with this worker; nothing was run "
                                f"(register it with @tqueues.task or tqueues_worker --import MODULE)")
        return fn

    def names(self) -> list[str]:
        return sorted(self._functions)
