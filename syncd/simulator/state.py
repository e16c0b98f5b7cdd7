"""The simulated InventoryArts account: purchase orders, inventory items and OAuth tokens.

All mutable data lives in :class:`State` behind one re-entrant lock; every public method
takes it, so the HTTP threads and the test thread can call in freely. Time comes from an
injectable clock and the account evolves lazily: :meth:`State.tick` applies whatever new
orders and changes fell due since the previous call (no background thread).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

__all__ = [
    "BUSINESS_FIELDS",
    "CheckinResult",
    "Item",
    "Order",
    "State",
    "TokenPair",
    "parse_money",
]

BUSINESS_FIELDS = ("po_number", "vendor_name", "grand_total", "status", "items_summary")
WINDOW = 20  # the API returns only the 20 most recent orders, with no paging
FIRST_ORDER_ID = 101
FIRST_ITEM_ID = 500
STATUSES = ("Draft", "Submitted", "Approved", "Ordered", "Received", "Closed")
_MAX_CATCH_UP = 1000  # events applied per tick; beyond that a clock jump skips the backlog
CODE_TTL = 600.0  # seconds an authorization code may wait for its exchange (RFC 6749 4.1.2)

_MUSIC_VENDORS = (
    "Sweetwater",
    "Guitar Center",
    "Music & Arts",
    "West Music",
    "Woodwind & Brasswind",
    "J.W. Pepper",
    "Pender's Music Co.",
)
_ART_VENDORS = ("Blick Art Materials", "School Specialty", "Jerry's Artarama")
_MUSIC_ITEMS = (
    ("Yamaha Synth", "899.99"),
    ("Snare Drum", "249.00"),
    ("Cables", "12.50"),
    ("Guitar Strings", "7.99"),
    ("Drumsticks", "9.49"),
    ("Clarinet Reeds", "24.95"),
    ("Music Stand", "34.99"),
    ("Valve Oil", "6.75"),
    ("Trumpet Mouthpiece", "59.00"),
    ("Clip-on Tuner", "14.99"),
    ("Concert Band Folio", "45.00"),
    ("Cello Rosin", "8.25"),
)
_ART_ITEMS = (
    ("Acrylic Paint Set", "39.99"),
    ("Canvas Panels", "27.50"),
    ("Brush Assortment", "18.99"),
    ("Sketchbooks", "6.49"),
    ("Air-Dry Clay", "21.00"),
    ("Watercolor Pans", "15.75"),
    ("Drawing Pencils", "11.99"),
)
_INSTRUMENTS = (
    "Yamaha Clarinet",
    "Bach Trumpet",
    "Ludwig Snare Drum",
    "Selmer Alto Saxophone",
    "Conn Trombone",
    "Eastman Violin",
    "Pearl Flute",
    "Jupiter French Horn",
)


def parse_money(value: object) -> Decimal:
    """Turn a total given as str, int, float or Decimal into an exact, finite Decimal."""
    if isinstance(value, bool):
        raise TypeError("grand_total must be a number or a decimal string")
    if isinstance(value, float):
        value = repr(value)  # the shortest repr, so 0.1 stays 0.1 rather than 0.1000000000000000055
    if not isinstance(value, str | int | Decimal):
        raise TypeError("grand_total must be a number or a decimal string")
    try:
        amount = Decimal(value)
    except InvalidOperation as exc:
        raise ValueError(f"not a decimal amount: {value!r}") from exc
    if not amount.is_finite():
        raise ValueError(f"not a finite amount: {value!r}")
    # Two decimals like the vendor's "1200.50", but never round away given precision.
    if amount.as_tuple().exponent >= -2:  # type: ignore[operator]
        amount = amount.quantize(Decimal("0.01"))
    return amount


def format_money(amount: Decimal) -> str:
    """Fixed-point text of an amount ("1200.50"), never scientific notation."""
    return format(amount, "f")


@dataclass
class Order:
    """One purchase order; ``version`` counts content changes (it keys the PDF link)."""

    id: int
    po_number: str
    vendor_name: str
    grand_total: Decimal
    status: str | None
    items_summary: str
    created_at: float
    version: int = 1

    def snapshot(self) -> dict[str, object]:
        """The API fields minus ``pdf_url``, in the document's order; total as a string.

        ``status`` is left out when it is None (the document does not promise it).
        """
        out: dict[str, object] = {
            "id": self.id,
            "po_number": self.po_number,
            "vendor_name": self.vendor_name,
            "grand_total": format_money(self.grand_total),
        }
        if self.status is not None:
            out["status"] = self.status
        out["items_summary"] = self.items_summary
        return out

    def pdf_lines(self) -> list[str]:
        """Text lines of this order's printed PDF."""
        lines = [f"Vendor: {self.vendor_name}"]
        if self.status is not None:
            lines.append(f"Status: {self.status}")
        lines.append(f"Order id: {self.id} (revision {self.version})")
        lines.append("")
        lines.append("Items:")
        lines.extend(
            f"    {part.strip()}" for part in self.items_summary.split(",") if part.strip()
        )
        lines.append("")
        lines.append(f"Grand total: ${format_money(self.grand_total)}")
        return lines


@dataclass
class Item:
    """A checkable inventory item; state: borrowed, loaned, available or returned."""

    id: int
    name: str
    state: str

    def snapshot(self) -> dict[str, object]:
        return {"id": self.id, "name": self.name, "state": self.state}


@dataclass(frozen=True)
class CheckinResult:
    """Outcome of an item check-in: the HTTP status and the JSON body to send."""

    status: int
    body: dict[str, object]


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: float


@dataclass(frozen=True)
class _Code:
    """An authorization code and what its exchange must present again."""

    client_id: str
    redirect_uri: str
    challenge: str  # S256 code_challenge (RFC 7636)
    expires: float


@dataclass
class _Tokens:
    access: dict[str, float] = field(default_factory=dict)  # token -> expiry on the clock
    refresh: set[str] = field(default_factory=set)  # live refresh tokens (rotated ones removed)
    codes: dict[str, _Code] = field(default_factory=dict)  # unredeemed authorization codes


def s256(verifier: str) -> str:
    """RFC 7636 S256: BASE64URL(SHA256(ASCII(code_verifier))), without padding."""
    digest = hashlib.sha256(verifier.encode("ascii", "replace")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class State:
    """The account. Thread-safe: every public method takes ``self.lock``."""

    def __init__(
        self,
        *,
        seed: int,
        orders: int,
        token_ttl: float,
        pdf_ttl: float,
        new_order_every: float | None,
        change_every: float | None,
        clock: Callable[[], float],
    ) -> None:
        for name, every in (("new_order_every", new_order_every), ("change_every", change_every)):
            if every is not None and every <= 0:
                raise ValueError(f"{name} must be positive or None")
        if orders < 0:
            raise ValueError("orders must be >= 0")
        self.lock = threading.RLock()
        self.clock = clock
        self.token_ttl = token_ttl
        self.pdf_ttl = pdf_ttl
        self._rng = random.Random(seed)
        self._link_key = secrets.token_bytes(32)  # signs pdf links; dies with the simulator
        self._tokens = _Tokens()
        self._orders: dict[int, Order] = {}
        self._day_counts: dict[str, int] = {}
        self._next_id = FIRST_ORDER_ID
        self._new_every = new_order_every
        self._change_every = change_every

        now = clock()
        # Back-date the initial orders a few hours apart so PO numbers span several days.
        gaps = [self._rng.uniform(1.0, 9.0) * 3600.0 for _ in range(orders)]
        created = now - sum(gaps)
        for gap in gaps:
            created += gap
            self._create(created_at=created)
        self._next_new = now + new_order_every if new_order_every else None
        self._next_change = now + change_every if change_every else None
        self._items = self._make_items()

    # ----------------------------------------------------------------- orders

    def _make_items(self) -> dict[int, Item]:
        """Items 500-509 are borrowed by students, 510-516 loaned out, 517-519 on the shelf."""
        items: dict[int, Item] = {}
        for offset in range(20):
            item_id = FIRST_ITEM_ID + offset
            name = f"{self._rng.choice(_INSTRUMENTS)} #{self._rng.randint(1, 40)}"
            state = "borrowed" if offset < 10 else "loaned" if offset < 17 else "available"
            items[item_id] = Item(item_id, name, state)
        return items

    def _po_number(self, created_at: float) -> str:
        day = datetime.fromtimestamp(created_at, UTC).strftime("%y%m%d")
        self._day_counts[day] = self._day_counts.get(day, 0) + 1
        return f"PO-{day}-{self._day_counts[day]}"

    def _generated_fields(self) -> tuple[str, Decimal, str]:
        """A vendor, the total and the items summary of a plausible order."""
        art = self._rng.random() < 0.25
        vendor = self._rng.choice(_ART_VENDORS if art else _MUSIC_VENDORS)
        catalog = _ART_ITEMS if art else _MUSIC_ITEMS
        picks = self._rng.sample(catalog, self._rng.randint(1, 4))
        total = Decimal(0)
        parts = []
        for name, price in picks:
            qty = self._rng.randint(1, 3) if Decimal(price) > 100 else self._rng.randint(1, 12)
            total += qty * Decimal(price)
            parts.append(f"{qty}x {name}")
        shipping = Decimal(self._rng.choice(("0.00", "9.95", "14.50", "25.00")))
        return vendor, (total + shipping).quantize(Decimal("0.01")), ", ".join(parts)

    def _create(self, *, created_at: float, **fields: object) -> Order:
        vendor, total, summary = self._generated_fields()
        order = Order(
            id=self._next_id,
            po_number=self._po_number(created_at),
            vendor_name=vendor,
            grand_total=total,
            status=self._rng.choice(STATUSES[:4]),
            items_summary=summary,
            created_at=created_at,
        )
        self._apply(order, fields)
        self._orders[order.id] = order
        self._next_id += 1
        return order

    @staticmethod
    def _apply(order: Order, fields: dict[str, object]) -> bool:
        """Set business fields on ``order``; return whether anything changed."""
        unknown = set(fields) - set(BUSINESS_FIELDS)
        if unknown:
            raise TypeError(f"unknown order field(s): {', '.join(sorted(unknown))}")
        changed = False
        for name, value in fields.items():
            if name == "grand_total":
                value = parse_money(value)
            elif name == "status":
                if value is not None and not isinstance(value, str):
                    raise TypeError("status must be a string or None")
            elif not isinstance(value, str):
                raise TypeError(f"{name} must be a string")
            if getattr(order, name) != value:
                setattr(order, name, value)
                changed = True
        return changed

    def _random_change(self) -> None:
        recent = self._newest()[:WINDOW]
        if not recent:
            return
        order = self._rng.choice(recent)
        status_index = STATUSES.index(order.status) if order.status in STATUSES else None
        if (
            status_index is not None
            and status_index + 1 < len(STATUSES)
            and self._rng.random() < 0.6
        ):
            self._apply(order, {"status": STATUSES[status_index + 1]})
        else:
            cents = Decimal(self._rng.randint(-2000, 5000)) / 100
            new_total = max(Decimal("1.00"), order.grand_total + cents).quantize(Decimal("0.01"))
            if new_total == order.grand_total:
                new_total += Decimal("1.00")
            self._apply(order, {"grand_total": new_total})
        order.version += 1

    def _newest(self) -> list[Order]:
        return sorted(self._orders.values(), key=lambda o: o.id, reverse=True)

    def tick(self) -> None:
        """Apply every scheduled new order and change that is due on the clock."""
        with self.lock:
            now = self.clock()
            for _ in range(_MAX_CATCH_UP):
                due: list[tuple[float, int]] = []
                if self._next_new is not None and self._next_new <= now:
                    due.append((self._next_new, 0))
                if self._next_change is not None and self._next_change <= now:
                    due.append((self._next_change, 1))
                if not due:
                    return
                at, kind = min(due)
                if kind == 0 and self._new_every is not None:
                    self._create(created_at=at)
                    self._next_new = at + self._new_every
                elif self._change_every is not None:
                    self._random_change()
                    self._next_change = at + self._change_every
            # The clock leapt far ahead: drop the backlog instead of spinning through it.
            if self._new_every is not None:
                self._next_new = now + self._new_every
            if self._change_every is not None:
                self._next_change = now + self._change_every

    def freeze(self) -> None:
        """Stop the scheduled new orders and changes (what is due now still happens)."""
        self.tick()
        with self.lock:
            self._new_every = self._change_every = None
            self._next_new = self._next_change = None

    def newest(self, limit: int | None = None) -> list[Order]:
        """Live order objects, newest first (callers must hold the lock while using them)."""
        with self.lock:
            self.tick()
            orders = self._newest()
            return orders if limit is None else orders[:limit]

    def order(self, order_id: int) -> Order | None:
        with self.lock:
            self.tick()  # a change that fell due must already invalidate older pdf links
            return self._orders.get(order_id)

    def snapshots(self) -> list[dict[str, object]]:
        with self.lock:
            return [o.snapshot() for o in self.newest()]

    def add_order(self, fields: dict[str, object]) -> dict[str, object]:
        with self.lock:
            self.tick()
            return self._create(created_at=self.clock(), **fields).snapshot()

    def update_order(self, order_id: int, fields: dict[str, object]) -> dict[str, object]:
        with self.lock:
            self.tick()
            order = self._orders.get(order_id)
            if order is None:
                raise KeyError(f"no order with id {order_id}")
            if self._apply(order, fields):
                order.version += 1
            return order.snapshot()

    # ------------------------------------------------------------- pdf links

    def _link_token(self, order_id: int, expires: int, version: int) -> str:
        message = f"{order_id}:{expires}:{version}".encode()
        return hmac.new(self._link_key, message, hashlib.sha256).hexdigest()

    def pdf_query(self, order: Order) -> str:
        """The query string of a fresh signed link to ``order``'s PDF, valid for pdf_ttl."""
        with self.lock:
            expires = int(self.clock() + self.pdf_ttl)
            token = self._link_token(order.id, expires, order.version)
            return f"po_id={order.id}&expires={expires}&token={token}"

    def check_pdf_link(self, order: Order, expires: int, token: str) -> str | None:
        """None when the link is good; otherwise "invalid" or "expired"."""
        with self.lock:
            expected = self._link_token(order.id, expires, order.version)
            if not hmac.compare_digest(expected, token):
                return "invalid"
            if self.clock() >= expires:
                return "expired"
            return None

    # ---------------------------------------------------------------- tokens

    def issue_tokens(self) -> TokenPair:
        with self.lock:
            access = secrets.token_urlsafe(32)
            refresh = secrets.token_urlsafe(32)
            self._tokens.access[access] = self.clock() + self.token_ttl
            self._tokens.refresh.add(refresh)
            return TokenPair(access, refresh, self.token_ttl)

    def access_token_valid(self, token: str) -> bool:
        with self.lock:
            expiry = self._tokens.access.get(token)
            return expiry is not None and self.clock() < expiry

    def rotate(self, refresh_token: str) -> TokenPair | None:
        """Spend ``refresh_token`` for a new pair; None if it is unknown, used or revoked."""
        with self.lock:
            if refresh_token not in self._tokens.refresh:
                return None
            self._tokens.refresh.discard(refresh_token)
            return self.issue_tokens()

    def issue_code(self, client_id: str, redirect_uri: str, challenge: str) -> str:
        """A single-use authorization code, bound to the client, redirect URI and challenge."""
        with self.lock:
            code = secrets.token_urlsafe(24)
            expires = self.clock() + CODE_TTL
            self._tokens.codes[code] = _Code(client_id, redirect_uri, challenge, expires)
            return code

    def redeem_code(
        self, code: str, *, client_id: str, redirect_uri: str, verifier: str
    ) -> TokenPair | None:
        """Spend ``code`` for a new pair; None (invalid_grant) unless everything matches.

        The code is spent by the first attempt, right or wrong, so a verifier cannot be
        guessed by trying again.
        """
        with self.lock:
            issued = self._tokens.codes.pop(code, None)
            if (
                issued is None
                or self.clock() >= issued.expires
                or issued.client_id != client_id
                or issued.redirect_uri != redirect_uri
                or not hmac.compare_digest(s256(verifier), issued.challenge)
            ):
                return None
            return self.issue_tokens()

    def revoke_tokens(self) -> None:
        with self.lock:
            self._tokens = _Tokens()

    def expire_access_tokens(self) -> None:
        with self.lock:
            for token in self._tokens.access:
                self._tokens.access[token] = float("-inf")

    # ----------------------------------------------------------------- items

    def item_snapshots(self) -> list[dict[str, object]]:
        with self.lock:
            return [item.snapshot() for item in self._items.values()]

    def checkin(self, item_id: int, kind: str) -> CheckinResult:
        """Return a borrowed item or check in a loaned one (``kind`` already validated)."""
        with self.lock:
            item = self._items.get(item_id)
            if item is None:
                return CheckinResult(404, {"success": False, "message": "Item not found."})
            if kind == "return_borrowed":
                if item.state != "borrowed":
                    return CheckinResult(
                        409, {"success": False, "message": "Item is not currently borrowed."}
                    )
                item.state = "returned"
                message = "Borrowed item returned and removed from active inventory."
            else:
                if item.state != "loaned":
                    return CheckinResult(
                        409, {"success": False, "message": "Item is not currently loaned out."}
                    )
                item.state = "available"
                message = "Loaned item checked in and returned to active inventory."
            return CheckinResult(200, {"success": True, "id": item_id, "message": message})
