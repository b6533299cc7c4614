"""The template engine marketers write in, sandboxed.

Marketers are not trusted with code. Their templates run on Django's
engine with only the harmless built-in tags (no {% debug %}, which would
print the context and every loaded module; no {% load %}, {% include %},
{% extends %} or {% url %}, which reach libraries, files and URLs) and all
the built-in filters, over a context of plain data wrapped in `Fields`:
no model instance, no method, nothing but values.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from django.template import Engine, Library, TemplateSyntaxError, defaulttags

_ALLOWED_TAGS = (
    "autoescape",
    "comment",
    "cycle",
    "filter",
    "firstof",
    "for",
    "if",
    "ifchanged",
    "now",
    "regroup",
    "resetcycle",
    "spaceless",
    "verbatim",
    "widthratio",
    "with",
)

_library = Library()
for _name in _ALLOWED_TAGS:
    _library.tags[_name] = defaulttags.register.tags[_name]


def _engine(*, autoescape: bool, debug: bool = False) -> Engine:
    engine = Engine(autoescape=autoescape, debug=debug)
    # Engine always adds Django's default tag libraries; replace them.
    filters = engine.get_template_builtins(["django.template.defaultfilters"])
    engine.template_builtins = [*filters, _library]
    engine.template_libraries = {}
    return engine


TEXT_ENGINE = _engine(autoescape=False)
HTML_ENGINE = _engine(autoescape=True)
# Only for checking what marketers save: in debug mode Django says where.
_CHECK_ENGINE = _engine(autoescape=True, debug=True)


def template_error(source: str) -> str | None:
    """What is wrong with a template source, with its line; None if fine."""
    try:
        _CHECK_ENGINE.from_string(source)
    except TemplateSyntaxError as exc:
        where = getattr(exc, "template_debug", None)
        line = f" (line {where['line']})" if where else ""
        return f"{exc}{line}"
    return None


class Fields:
    """Read-only plain data for templates: keys, not attributes.

    A dict would hand templates its methods ({{ contact.clear }} calls
    dict.clear); this offers lookups, iteration and items() only."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> Any:
        return wrap(self._data[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def items(self) -> list[tuple[str, Any]]:
        return [(key, wrap(value)) for key, value in self._data.items()]

    def __str__(self) -> str:
        return ", ".join(f"{key}: {value}" for key, value in self._data.items())

    __repr__ = __str__


def wrap(value: Any) -> Any:
    if isinstance(value, Mapping):
        return Fields(value)
    if isinstance(value, list | tuple):
        return [wrap(v) for v in value]
    return value
