"""The stdout sink: one CloudEvent per line on standard output, or a readable summary."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from syncd.errors import SinkUnavailable
from syncd.events import StoredEvent
from syncd.sinks.base import Sink


def summarize(event: StoredEvent) -> str:
    """One human line for an event (the ``demo`` console)."""
    body = json.loads(event.payload)
    data = body.get("data", {})
    kind = event.type.rsplit(".", 1)[-1]
    order = data.get("purchase_order")
    if order:
        line = (
            f"{kind:<8} {order['po_number']:<14} {order['vendor_name']:<22} "
            f"{order['grand_total']:>10}  {order.get('status') or '-':<10} v{order['version']}"
        )
        for field, change in data.get("changes", {}).items():
            line += f"\n         {field}: {change['old']} -> {change['new']}"
        return line
    if kind in ("pdf_archived", "pdf_failed"):
        what = f"pdf      order {data['purchase_order_id']} v{data['version']}"
        if kind == "pdf_failed":
            return f"{what} failed: {data['reason']}"
        return f"{what} archived, {data['size']:,} bytes: {data['path'][:40]}..."
    details = ", ".join(f"{k}={v}" for k, v in data.items())
    return f"{kind:<8} {event.subject}: {details}"


class StdoutSink(Sink):
    def __init__(self, name: str, *, pretty: bool = False, stream: TextIO | None = None) -> None:
        super().__init__(name)
        self._pretty = pretty
        self._stream = stream

    @classmethod
    def from_config(cls, config: Any) -> StdoutSink:
        return cls(config.name)

    def send(self, events: Sequence[StoredEvent]) -> None:
        stream = self._stream or sys.stdout
        render = summarize if self._pretty else (lambda event: event.payload)
        try:
            stream.write("".join(render(event) + "\n" for event in events))
            stream.flush()
        except (OSError, ValueError) as exc:
            raise SinkUnavailable(f"sink {self.name!r}: cannot write to stdout: {exc}") from None
