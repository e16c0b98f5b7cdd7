"""Hand-written, valid one-page PDF 1.4 documents for the simulator's ``print_po.php``.

No PDF library: the file is assembled from literal objects with a correct xref table, so
the bytes are deterministic for a given content. An optional padding stream grows the
document to a requested size; it is produced chunk by chunk, so a 200 MB document never
sits in memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

__all__ = ["PdfDocument", "render_pdf"]

CHUNK_SIZE = 64 * 1024
_MAX_LINES = 40
_HEADER = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"  # the binary comment marks the file as binary
_PAD_LINE = b"% syncd simulator padding: this stream is deliberately unreferenced filler.\n"
_PAD_BLOCK = (_PAD_LINE * (CHUNK_SIZE // len(_PAD_LINE) + 1))[:CHUNK_SIZE]


@dataclass(frozen=True)
class PdfDocument:
    """A PDF split around its padding: ``head + pad_len filler bytes + tail``."""

    head: bytes
    pad_len: int
    tail: bytes

    @property
    def size(self) -> int:
        """Total length in bytes (what goes into Content-Length)."""
        return len(self.head) + self.pad_len + len(self.tail)

    def chunks(self, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """Yield the document in pieces of at most ``chunk_size`` bytes (padding included)."""
        yield self.head
        remaining = self.pad_len
        while remaining > 0:
            n = min(remaining, chunk_size, len(_PAD_BLOCK))
            yield _PAD_BLOCK[:n]
            remaining -= n
        yield self.tail

    def to_bytes(self) -> bytes:
        """The whole document in memory (fine for unpadded or test-sized documents)."""
        return b"".join(self.chunks())


def _pdf_string(text: str) -> bytes:
    """A PDF literal string in WinAnsi (Helvetica's encoding here), escaped."""
    raw = text.encode("cp1252", errors="replace")
    raw = raw.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)")
    return b"(" + raw + b")"


def _content_stream(title: str, lines: Sequence[str]) -> bytes:
    body = [
        b"BT /F1 18 Tf 72 730 Td " + _pdf_string(title) + b" Tj ET",
        b"BT /F1 11 Tf 72 700 Td 15 TL",
    ]
    shown = list(lines[:_MAX_LINES])
    if len(lines) > _MAX_LINES:
        shown[-1] = "..."
    body.extend(_pdf_string(line) + b" Tj T*" for line in shown)
    body.append(b"ET")
    return b"\n".join(body) + b"\n"


def render_pdf(title: str, lines: Sequence[str], *, pad_to: int | None = None) -> PdfDocument:
    """Render a one-page document showing ``title`` and ``lines`` in Helvetica.

    With ``pad_to``, an unreferenced filler stream makes the file at least that many bytes.
    """
    content = _content_stream(title, lines)
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792]"
        b" /Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"endstream",
        b"<< /Title " + _pdf_string(title) + b" /Producer (syncd InventoryArts simulator) >>",
    ]
    head = bytearray(_HEADER)
    offsets: list[int] = []
    for number, obj in enumerate(objects, start=1):
        offsets.append(len(head))
        head += b"%d 0 obj\n" % number + obj + b"\nendobj\n"

    def finish(pad_len: int | None) -> tuple[bytes, bytes]:
        """Return (head, tail) for a padding object of ``pad_len`` bytes (None: no padding)."""
        full_head = bytes(head)
        all_offsets = list(offsets)
        pad_suffix = b""
        if pad_len is not None:
            all_offsets.append(len(full_head))
            full_head += b"%d 0 obj\n<< /Length %d >>\nstream\n" % (len(objects) + 1, pad_len)
            pad_suffix = b"\nendstream\nendobj\n"
        xref_at = len(full_head) + (pad_len or 0) + len(pad_suffix)
        count = len(all_offsets) + 1
        xref = b"xref\n0 %d\n0000000000 65535 f \n" % count
        xref += b"".join(b"%010d 00000 n \n" % off for off in all_offsets)
        trailer = b"trailer\n<< /Size %d /Root 1 0 R /Info 6 0 R >>\nstartxref\n%d\n%%%%EOF" % (
            count,
            xref_at,
        )
        return full_head, pad_suffix + xref + trailer

    plain_head, plain_tail = finish(None)
    if pad_to is None or len(plain_head) + len(plain_tail) >= pad_to:
        return PdfDocument(plain_head, 0, plain_tail)
    # The padding object's own header and the offsets' digits depend on the padding length,
    # so settle it by iteration (converges in a step or two).
    pad_len = max(0, pad_to - len(plain_head) - len(plain_tail))
    while True:
        full_head, tail = finish(pad_len)
        total = len(full_head) + pad_len + len(tail)
        if total >= pad_to:
            return PdfDocument(full_head, pad_len, tail)
        pad_len += pad_to - total
