"""Redaction: no token, secret or signed URL reaches a log line or an error line."""

from __future__ import annotations

import io
import json

from syncd.logging import MASK, configure_logging, get_logger, redact, secrets


def test_registered_secret_is_masked_anywhere() -> None:
    """A known secret is replaced wherever it appears."""
    secrets.add("s3cr3t-client-value")
    assert redact("failed with s3cr3t-client-value inside") == f"failed with {MASK} inside"


def test_short_values_are_not_registered() -> None:
    """Tiny strings would mask ordinary words; they are ignored."""
    secrets.add("abc")
    assert redact("abc") == "abc"


def test_signed_url_token_is_masked() -> None:
    """The token of a pdf_url never survives."""
    text = redact("GET https://ia.test/print_po.php?po_id=5&expires=9&token=deadbeef01 failed")
    assert "deadbeef01" not in text
    assert "po_id=5" in text


def test_bearer_header_is_masked() -> None:
    """Authorization: Bearer values are masked."""
    assert "abc.def-123" not in redact("Authorization: Bearer abc.def-123")


def test_json_token_fields_are_masked() -> None:
    """refresh_token / access_token / client_secret fields in text are masked."""
    text = redact('{"refresh_token": "rt-123456", "client_secret":"cs-9999", "x": 1}')
    assert "rt-123456" not in text
    assert "cs-9999" not in text
    assert '"x": 1' in text


def test_webhook_secret_is_masked() -> None:
    """whsec_ secrets are masked by shape."""
    assert "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" not in redact(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    )


def test_log_lines_are_json_and_redacted() -> None:
    """A JSON log line masks secret-named keys and secrets inside values."""
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    secrets.add("access-token-value-1")
    get_logger(connection="band").info(
        "refreshed", refresh_token="rt-plain", detail="sent access-token-value-1"
    )
    line = json.loads(stream.getvalue())
    assert line["connection"] == "band"
    assert line["refresh_token"] == MASK
    assert line["detail"] == f"sent {MASK}"
    assert line["level"] == "info"


def test_log_level_filters() -> None:
    """Below the configured level nothing is written."""
    stream = io.StringIO()
    configure_logging("warning", "json", stream)
    get_logger().info("quiet")
    assert stream.getvalue() == ""
