"""Name templates of the broker sinks: ``inventoryarts.{type}`` and the like (pure)."""

from __future__ import annotations

import string
from collections.abc import Callable

from syncd.events import StoredEvent

TEMPLATE_FIELDS = ("type", "connection", "subject")
Template = list[tuple[str, str | None]]


def parse_template(template: str) -> Template:
    """``template`` as (literal, field) pairs; ValueError for unknown or odd placeholders."""
    parts: Template = []
    for literal, field, spec, conversion in string.Formatter().parse(template):
        if field is not None and (field not in TEMPLATE_FIELDS or spec or conversion):
            names = ", ".join("{" + name + "}" for name in TEMPLATE_FIELDS)
            raise ValueError(f"unknown placeholder {{{field}}} (use {names})")
        parts.append((literal, field))
    return parts


def render(
    parts: Template, event: StoredEvent, clean: Callable[[str], str] = lambda value: value
) -> str:
    """The name for ``event``: each placeholder filled with its value passed through
    ``clean`` (a broker's wildcard characters must not come from event data)."""
    values = {"type": event.type, "connection": event.connection, "subject": event.subject}
    return "".join(
        literal + (clean(values[field]) if field is not None else "") for literal, field in parts
    )
