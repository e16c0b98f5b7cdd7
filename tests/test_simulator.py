"""The bundled InventoryArts simulator, exercised over real loopback HTTP with httpx."""

from __future__ import annotations

import http.client
import io
import json
import re
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from syncd.simulator import Simulator, serve

ORDERS = "/api/v1/purchase_orders.php"
ME = "/api/v1/me.php"
CHECKIN = "/api/v1/item_checkin.php"
REFRESH = "/oauth/oauth_refresh.php"
PRINT = "/print_po.php"
T0 = 1_767_600_000.0  # 2026-01-05, a fixed start for the injected clock


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sim(clock: FakeClock) -> Iterator[Simulator]:
    with Simulator(seed=1, orders=25, clock=clock).start() as running:
        yield running


@pytest.fixture
def api(sim: Simulator) -> Iterator[httpx.Client]:
    """A client authorized with a fresh access token."""
    tokens = sim.issue_tokens()
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    with httpx.Client(base_url=sim.base_url, headers=headers, timeout=5) as client:
        yield client


def refresh(sim: Simulator, refresh_token: str, **overrides: Any) -> httpx.Response:
    body = {
        "refresh_token": refresh_token,
        "client_id": sim.client_id,
        "client_secret": sim.client_secret,
        "grant_type": "refresh_token",
        **overrides,
    }
    return httpx.post(sim.base_url + REFRESH.lstrip("/"), json=body, timeout=5)


def pdf_structure_ok(data: bytes) -> bool:
    """Every xref offset points at its object and startxref points at the xref table."""
    startxref = int(data.rsplit(b"startxref", 1)[1].split()[0])
    if not data[startxref:].startswith(b"xref"):
        return False
    lines = data[startxref:].split(b"\n")
    count = int(lines[1].split()[1])
    for number in range(1, count):
        offset = int(lines[2 + number][:10])
        if not data[offset:].startswith(b"%d 0 obj" % number):
            return False
    return True


# ---------------------------------------------------------------- purchase orders


def test_purchase_orders_returns_the_20_newest_newest_first(
    sim: Simulator, api: httpx.Client
) -> None:
    """Only the 20 most recent of 25 orders come back, highest id first."""
    orders = api.get(ORDERS).json()
    assert [o["id"] for o in orders] == list(range(125, 105, -1))
    assert [o["id"] for o in sim.orders] == list(range(125, 100, -1))


def test_orders_carry_exactly_the_documented_fields(api: httpx.Client) -> None:
    """Each order has the documented fields, a PO-YYMMDD-n number and a string total."""
    for order in api.get(ORDERS).json():
        assert list(order) == [
            "id",
            "po_number",
            "vendor_name",
            "grand_total",
            "status",
            "pdf_url",
            "items_summary",
        ]
        assert re.fullmatch(r"PO-\d{6}-\d+", order["po_number"])
        assert re.fullmatch(r"\d+\.\d\d", order["grand_total"])
        assert re.fullmatch(r"(\d+x [^,]+)(, \d+x [^,]+)*", order["items_summary"])


def test_numeric_totals_are_exact_json_numbers(clock: FakeClock) -> None:
    """With numeric_totals the total is a bare number literal equal to the decimal string."""
    with Simulator(seed=3, orders=5, clock=clock, numeric_totals=True).start() as sim:
        token = sim.issue_tokens()["access_token"]
        response = httpx.get(
            sim.base_url + ORDERS.lstrip("/"), headers={"Authorization": f"Bearer {token}"}
        )
        literals = re.findall(r'"grand_total": ([^,]+),', response.text)
        assert literals == [o["grand_total"] for o in sim.orders]
        parsed = json.loads(response.text, parse_float=Decimal)
        assert [o["grand_total"] for o in parsed] == [Decimal(x) for x in literals]


def test_same_seed_gives_same_orders(clock: FakeClock) -> None:
    """Orders are a pure function of the seed and the clock."""
    first = Simulator(seed=7, orders=10, clock=clock).orders
    again = Simulator(seed=7, orders=10, clock=clock).orders
    other = Simulator(seed=8, orders=10, clock=clock).orders
    assert first == again
    assert first != other


def test_status_none_is_left_out(sim: Simulator, api: httpx.Client) -> None:
    """An order without a status has no status key (the field is optional)."""
    sim.update_order(125, status=None)
    assert "status" not in api.get(ORDERS).json()[0]


def test_add_and_update_order(sim: Simulator, api: httpx.Client) -> None:
    """add_order takes the next id; update_order changes what the API shows."""
    added = sim.add_order(vendor_name="Sweetwater", grand_total="1200.5")
    assert added["id"] == 126
    assert added["grand_total"] == "1200.50"
    sim.update_order(126, status="Approved", grand_total=Decimal("99.999"))
    top = api.get(ORDERS).json()[0]
    assert (top["id"], top["status"], top["grand_total"]) == (126, "Approved", "99.999")
    with pytest.raises(TypeError):
        sim.update_order(126, pdf_url="x")


def test_new_orders_arrive_as_the_clock_moves(clock: FakeClock) -> None:
    """With new_order_every, each elapsed period adds one order on the next request."""
    with Simulator(seed=1, orders=3, clock=clock, new_order_every=30.0).start() as sim:
        assert len(sim.orders) == 3
        clock.advance(95)
        assert [o["id"] for o in sim.orders] == [106, 105, 104, 103, 102, 101]


def test_orders_change_as_the_clock_moves(clock: FakeClock) -> None:
    """With change_every, each elapsed period changes a recent order's status or total."""
    with Simulator(seed=1, orders=5, clock=clock, change_every=45.0).start() as sim:
        before = sim.orders
        clock.advance(45 * 4)
        after = sim.orders
        assert [o["id"] for o in after] == [o["id"] for o in before]
        changed = [(b, a) for b, a in zip(before, after, strict=True) if b != a]
        assert changed
        for b, a in changed:
            assert {k for k in a if a[k] != b.get(k)} <= {"status", "grand_total"}


# -------------------------------------------------------------------- profile, auth


def test_me_returns_the_profile(api: httpx.Client) -> None:
    """me.php answers the documented profile with its connection label."""
    assert api.get(ME).json()["connection_label"] == "jdoe - High School Band"


def test_missing_bearer_gives_invalid_token(sim: Simulator) -> None:
    """No Authorization header is a 401 invalid_token with WWW-Authenticate."""
    response = httpx.get(sim.base_url + ORDERS.lstrip("/"))
    assert response.status_code == 401
    assert response.json() == {"error": "invalid_token"}
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'


def test_expired_access_token_gives_401(clock: FakeClock, api: httpx.Client) -> None:
    """An access token stops working once token_ttl has passed on the clock."""
    assert api.get(ME).status_code == 200
    clock.advance(3600)
    assert api.get(ME).status_code == 401


def test_expire_access_tokens_leaves_refresh_working(sim: Simulator) -> None:
    """expire_access_tokens kills access tokens, not refresh tokens."""
    tokens = sim.issue_tokens()
    sim.expire_access_tokens()
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert httpx.get(sim.base_url + ME.lstrip("/"), headers=headers).status_code == 401
    assert refresh(sim, tokens["refresh_token"]).status_code == 200


def test_revoke_tokens_kills_access_and_refresh(sim: Simulator, api: httpx.Client) -> None:
    """After revoke_tokens neither kind of token works."""
    tokens = sim.issue_tokens()
    sim.revoke_tokens()
    assert api.get(ME).status_code == 401
    assert refresh(sim, tokens["refresh_token"]).json() == {"error": "invalid_grant"}


def test_refresh_rotates_the_refresh_token(sim: Simulator) -> None:
    """A refresh token works once; its reuse is invalid_grant; the new pair works."""
    old = sim.issue_tokens()
    first = refresh(sim, old["refresh_token"])
    assert first.status_code == 200
    new = first.json()
    assert set(new) == {"access_token", "refresh_token", "expires_in", "token_type"}
    assert (new["expires_in"], new["token_type"]) == (3600, "Bearer")
    assert new["refresh_token"] != old["refresh_token"]
    reused = refresh(sim, old["refresh_token"])
    assert (reused.status_code, reused.json()) == (400, {"error": "invalid_grant"})
    headers = {"Authorization": f"Bearer {new['access_token']}"}
    assert httpx.get(sim.base_url + ME.lstrip("/"), headers=headers).status_code == 200
    assert refresh(sim, new["refresh_token"]).status_code == 200
    assert sim.stats.refresh_calls == 3


def test_refresh_with_wrong_client_is_invalid_client(sim: Simulator) -> None:
    """A wrong client secret is 401 invalid_client, and the refresh token survives."""
    tokens = sim.issue_tokens()
    response = refresh(sim, tokens["refresh_token"], client_secret="nope")
    assert (response.status_code, response.json()) == (401, {"error": "invalid_client"})
    assert refresh(sim, tokens["refresh_token"]).status_code == 200


def test_refresh_rejects_malformed_requests(sim: Simulator) -> None:
    """Non-JSON is invalid_request; another grant type is unsupported_grant_type."""
    url = sim.base_url + REFRESH.lstrip("/")
    not_json = httpx.post(url, content=b"refresh_token=x&grant_type=refresh_token")
    assert (not_json.status_code, not_json.json()) == (400, {"error": "invalid_request"})
    tokens = sim.issue_tokens()
    wrong = refresh(sim, tokens["refresh_token"], grant_type="password")
    assert (wrong.status_code, wrong.json()) == (400, {"error": "unsupported_grant_type"})


# ------------------------------------------------------------------------------ pdfs


def test_pdf_link_serves_a_valid_pdf_without_bearer(sim: Simulator, api: httpx.Client) -> None:
    """The signed link alone fetches a well-formed one-page PDF naming the PO."""
    order = api.get(ORDERS).json()[0]
    response = httpx.get(order["pdf_url"])
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/pdf"
    data = response.content
    assert data.startswith(b"%PDF-1.4")
    assert data.endswith(b"%%EOF")
    assert pdf_structure_ok(data)
    assert order["po_number"].encode() in data
    assert data == sim.pdf_bytes(order["id"])


def test_pdf_url_is_fresh_on_every_poll(clock: FakeClock, api: httpx.Client) -> None:
    """Each poll carries a new expiry one hour ahead and so a new token."""
    first = api.get(ORDERS).json()[0]["pdf_url"]
    clock.advance(10)
    second = api.get(ORDERS).json()[0]["pdf_url"]
    assert first != second
    assert f"expires={int(T0 + 10 + 3600)}" in second


def test_pdf_link_expires(clock: FakeClock, api: httpx.Client) -> None:
    """A link is refused with 403 once pdf_ttl has passed on the clock."""
    url = api.get(ORDERS).json()[0]["pdf_url"]
    clock.advance(3599)
    assert httpx.get(url).status_code == 200
    clock.advance(1)
    expired = httpx.get(url)
    assert expired.status_code == 403
    assert b"expired" in expired.content


def test_pdf_link_with_bad_token_is_403(api: httpx.Client) -> None:
    """A tampered token is refused with 403."""
    url = api.get(ORDERS).json()[0]["pdf_url"]
    assert httpx.get(url[:-4] + "0000").status_code == 403


def test_pdf_link_for_unknown_order_is_404(sim: Simulator) -> None:
    """An unknown po_id is 404."""
    url = sim.base_url + "print_po.php?po_id=999&expires=9999999999&token=00"
    assert httpx.get(url).status_code == 404


def test_changed_order_has_new_pdf_and_old_link_dies(sim: Simulator, api: httpx.Client) -> None:
    """Changing an order changes its PDF bytes and invalidates links to the old content."""
    old_url = api.get(ORDERS).json()[0]["pdf_url"]
    old_pdf = httpx.get(old_url).content
    sim.update_order(125, grand_total="1.00")
    assert httpx.get(old_url).status_code == 403
    new_pdf = httpx.get(api.get(ORDERS).json()[0]["pdf_url"]).content
    assert new_pdf != old_pdf
    assert b"$1.00" in new_pdf


def test_pdf_size_pads_the_document(clock: FakeClock) -> None:
    """pdf_size pads the PDF to at least that size and it stays well-formed."""
    with Simulator(seed=1, orders=1, clock=clock, pdf_size=300_000).start() as sim:
        data = httpx.get(sim.pdf_url(101)).content
        assert len(data) >= 300_000
        assert len(data) < 300_100
        assert data.startswith(b"%PDF-")
        assert data.endswith(b"%%EOF")
        assert pdf_structure_ok(data)


# ---------------------------------------------------------------------------- faults


def test_status_fault_with_retry_after(sim: Simulator, api: httpx.Client) -> None:
    """A status fault answers its status and Retry-After, then the endpoint recovers."""
    sim.faults.add(ORDERS, "status", status=503, retry_after="2")
    failed = api.get(ORDERS)
    assert failed.status_code == 503
    assert failed.headers["retry-after"] == "2"
    assert "error" in failed.json()
    assert api.get(ORDERS).status_code == 200


def test_faults_fire_in_order_and_times(sim: Simulator, api: httpx.Client) -> None:
    """Faults for a path fire in the order added, each for its `times` requests."""
    sim.faults.add(ORDERS, "status", status=500, times=2)
    sim.faults.add(ORDERS, "status", status=429)
    codes = [api.get(ORDERS).status_code for _ in range(4)]
    assert codes == [500, 500, 429, 200]


def test_fault_without_limit_lasts_until_cleared(sim: Simulator, api: httpx.Client) -> None:
    """times=None keeps firing until faults.clear()."""
    sim.faults.add(ME, "status", status=502, times=None)
    assert [api.get(ME).status_code for _ in range(3)] == [502, 502, 502]
    sim.faults.clear()
    assert api.get(ME).status_code == 200


def test_drop_fault_closes_without_response(sim: Simulator, api: httpx.Client) -> None:
    """A drop fault closes the connection before any response byte."""
    sim.faults.add(ORDERS, "drop")
    with pytest.raises(httpx.RemoteProtocolError):
        api.get(ORDERS)
    assert api.get(ORDERS).status_code == 200
    assert [r.status for r in sim.stats.requests] == [0, 200]


def test_reset_mid_body_fault_truncates_the_body(sim: Simulator, api: httpx.Client) -> None:
    """reset_mid_body sends the headers and half the body, then closes."""
    sim.faults.add(ORDERS, "reset_mid_body")
    with pytest.raises(httpx.RemoteProtocolError):
        api.get(ORDERS)
    assert api.get(ORDERS).status_code == 200


def test_reset_mid_body_on_refresh_still_rotates(sim: Simulator) -> None:
    """A refresh whose answer is lost in transit has still spent the old refresh token."""
    tokens = sim.issue_tokens()
    sim.faults.add(REFRESH, "reset_mid_body")
    with pytest.raises(httpx.RemoteProtocolError):
        refresh(sim, tokens["refresh_token"])
    assert refresh(sim, tokens["refresh_token"]).json() == {"error": "invalid_grant"}


def test_slow_fault_delays_the_answer(sim: Simulator, api: httpx.Client) -> None:
    """A slow fault sleeps `delay` seconds, then answers normally."""
    sim.faults.add(ME, "slow", delay=0.3)
    started = time.monotonic()
    assert api.get(ME).status_code == 200
    assert time.monotonic() - started >= 0.3


def test_html_fault_serves_a_maintenance_page(sim: Simulator, api: httpx.Client) -> None:
    """An html fault is a 200 text/html maintenance page."""
    sim.faults.add(ORDERS, "html")
    response = api.get(ORDERS)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert b"maintenance" in response.content


def test_body_fault_serves_the_raw_body(sim: Simulator, api: httpx.Client) -> None:
    """A body fault is a 200 application/json carrying exactly the given text."""
    sim.faults.add(ORDERS, "body", body='{"not": "a list"')
    response = api.get(ORDERS)
    assert (response.status_code, response.text) == (200, '{"not": "a list"')
    assert response.headers["content-type"] == "application/json"


def test_faults_apply_to_pdf_links(sim: Simulator, api: httpx.Client) -> None:
    """Faults match the print endpoint too, before the link is checked."""
    url = api.get(ORDERS).json()[0]["pdf_url"]
    sim.faults.add(PRINT, "status", status=504)
    assert httpx.get(url).status_code == 504
    assert httpx.get(url).status_code == 200


# -------------------------------------------------------------------------- check-in


def test_checkin_returns_a_borrowed_item(sim: Simulator, api: httpx.Client) -> None:
    """Returning borrowed item 502 succeeds with the documented message."""
    response = api.post(CHECKIN, json={"id": 502, "type": "return_borrowed"})
    assert response.status_code == 200
    assert response.json() == {
        "success": True,
        "id": 502,
        "message": "Borrowed item returned and removed from active inventory.",
    }
    assert {i["id"]: i["state"] for i in sim.items}[502] == "returned"


def test_checkin_of_a_loaned_item(api: httpx.Client) -> None:
    """Checking in loaned item 510 succeeds."""
    response = api.post(CHECKIN, json={"id": 510, "type": "checkin_loaned"})
    assert (response.status_code, response.json()["success"]) == (200, True)


def test_checkin_unknown_item_is_404(api: httpx.Client) -> None:
    """An unknown item id is 404 Item not found."""
    response = api.post(CHECKIN, json={"id": 9999, "type": "return_borrowed"})
    assert response.status_code == 404
    assert response.json() == {"success": False, "message": "Item not found."}


def test_checkin_in_the_wrong_state_is_409(api: httpx.Client) -> None:
    """Returning an item twice, or as the wrong type, is 409."""
    assert api.post(CHECKIN, json={"id": 503, "type": "return_borrowed"}).status_code == 200
    again = api.post(CHECKIN, json={"id": 503, "type": "return_borrowed"})
    assert (again.status_code, again.json()["success"]) == (409, False)
    wrong = api.post(CHECKIN, json={"id": 511, "type": "return_borrowed"})
    assert wrong.status_code == 409


def test_checkin_with_a_bad_type_is_400(api: httpx.Client) -> None:
    """A type other than return_borrowed or checkin_loaned is 400."""
    response = api.post(CHECKIN, json={"id": 502, "type": "steal"})
    assert (response.status_code, response.json()["success"]) == (400, False)


def test_checkin_needs_a_bearer(sim: Simulator) -> None:
    """item_checkin.php is bearer-protected like the rest of /api/v1."""
    response = httpx.post(sim.base_url + CHECKIN.lstrip("/"), json={"id": 502})
    assert response.status_code == 401


# ---------------------------------------------------------------- http and tooling


def test_unknown_path_is_404_and_wrong_method_is_405(api: httpx.Client) -> None:
    """Unknown paths are 404 JSON; a known path with the wrong method is 405."""
    assert api.get("/api/v1/nothing.php").status_code == 404
    wrong = api.post(ORDERS, json={})
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "GET"


def test_keep_alive_reuses_one_connection(sim: Simulator) -> None:
    """Several requests travel over one HTTP/1.1 connection."""
    host, port = sim.base_url.removeprefix("http://").rstrip("/").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", ORDERS)
        first = conn.getresponse()
        first.read()
        sock = conn.sock
        conn.request("GET", "/nowhere")
        second = conn.getresponse()
        second.read()
        assert (first.status, second.status) == (401, 404)
        assert conn.sock is sock
    finally:
        conn.close()


def test_stats_record_requests(sim: Simulator, api: httpx.Client) -> None:
    """stats records method, path, query, lower-case headers and status."""
    api.get(ORDERS, params={"since": "1"})
    record = sim.stats.requests[-1]
    assert (record.method, record.path, record.query, record.status) == (
        "GET",
        ORDERS,
        {"since": "1"},
        200,
    )
    assert record.headers["authorization"].startswith("Bearer ")
    assert sim.stats.count(ORDERS) == 1


def test_admin_api(sim: Simulator) -> None:
    """The /_sim/ endpoints add orders, issue tokens and report state."""
    base = sim.base_url
    added = httpx.post(base + "_sim/orders", json={"vendor_name": "Guitar Center"}).json()
    assert (added["id"], added["vendor_name"]) == (126, "Guitar Center")
    tokens = httpx.post(base + "_sim/tokens").json()
    assert refresh(sim, tokens["refresh_token"]).status_code == 200
    state = httpx.get(base + "_sim/state").json()
    assert state["orders"][0]["id"] == 126
    assert state["stats"]["refresh_calls"] == 1


def test_serve_prints_a_config_snippet_and_stops() -> None:
    """serve() prints the URL, credentials and a [[connections]] snippet until stopped."""
    out = io.StringIO()
    stop = threading.Event()
    thread = threading.Thread(
        target=serve, kwargs={"port": 0, "out": out, "stop": stop, "orders": 2}
    )
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while "refresh_token = " not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.02)
        text = out.getvalue()
        assert "[[connections]]" in text
        base_url = re.search(r'base_url = "([^"]+)"', text)
        assert base_url is not None
        response = httpx.get(base_url.group(1) + ME.lstrip("/"))
        assert response.status_code == 401
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
