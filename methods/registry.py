"""Method registry: `@register(name)` on a factory, `get(name, **overrides)`, `available()`."""

from __future__ import annotations

import difflib
from collections.abc import Callable

from methods.method import Method

Factory = Callable[..., Method]
_REGISTRY: dict[str, Factory] = {}


def register(name: str) -> Callable[[Factory], Factory]:
    """Decorator: record `factory(**overrides) -> Method` under `name` (names are unique)."""

    def decorate(factory: Factory) -> Factory:
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorate


def available() -> tuple[str, ...]:
    """Sorted names of all registered methods."""
    return tuple(sorted(_REGISTRY))


def get(name: str, **overrides) -> Method:
    """Build method `name` with knob overrides; an unknown name or knob says what exists."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown method {name!r}; available: {', '.join(available())}.{hint}")
    return _REGISTRY[name](**overrides)


def with_knobs(base: dict, overrides: dict, fixed: dict | None = None) -> dict:
    """Merge factory defaults and user overrides; refuse unknown knobs and changes to `fixed` ones."""
    unknown = set(overrides) - set(Method.knobs())
    if unknown:
        raise ValueError(
            f"method {base['name']!r}: unknown knob(s) {sorted(unknown)}; knobs are {Method.knobs()}"
        )
    for knob, value in (fixed or {}).items():
        if knob in overrides and overrides[knob] != value:
            raise ValueError(
                f"method {base['name']!r} is defined by {knob}={value!r}; choose another method "
                f"(e.g. 'sage') instead of overriding it to {overrides[knob]!r}"
            )
    return {**base, **(fixed or {}), **overrides}
