"""Live price feeds: property round trips of the ENTSO-E A44 parser, the ERCOT API
parser across DST, static and replay feeds, the live feeds against a real HTTP server on a
loopback port serving the documented answer shapes, and make_feed from [site.feed] tables.
The price-file loader is tested in test_price_files."""

from __future__ import annotations

import asyncio
from pathlib import Path
import http.server
import json
import shutil
import threading
import urllib.parse
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from miner.sched.feeds import (
    FEED_KEYS,
    EntsoeFeed,
    ErcotFeed,
    GridstatusFeed,
    HTTPJSONFeed,
    ReplayFeed,
    carry_latest,
    StaticFeed,
    feed_for_site,
    intervals_from_records,
    json_path,
    load_price_csv,
    make_feed,
    parse_entsoe_a44,
    parse_ercot_spp,
    price_at,
)
from miner.node.regtest import free_port
from miner.sched.model import UTC, FeedError, PriceInterval, SiteSpec
from tests.sched.test_price_files import DATA, H, rows, utc


def run(coro):
    return asyncio.run(coro)


# ---------------------------------------------------------------------------
# ENTSO-E A44 documents


A44_NS = "urn:iec62325.351:tc57wg16:451-3:publicationdocument:7:3"


def a44_xml(periods, *, curve="A01", created="2024-03-30T12:50:00Z", currency="EUR") -> bytes:
    """A Publication_MarketDocument in the documented A44 shape (element names and order
    as ENTSO-E publishes them); `periods`: (start, resolution, {position: price})."""
    body = []
    for start, step_min, points, slots in periods:
        end = start + timedelta(minutes=step_min) * slots
        pts = "".join(f"<Point><position>{pos}</position><price.amount>{price}</price.amount></Point>"
                      for pos, price in sorted(points.items()))
        body.append(f"""<TimeSeries><mRID>1</mRID><auction.type>A01</auction.type>
<businessType>A62</businessType>
<in_Domain.mRID codingScheme="A01">10YNL----------L</in_Domain.mRID>
<out_Domain.mRID codingScheme="A01">10YNL----------L</out_Domain.mRID>
<contract_MarketAgreement.type>A01</contract_MarketAgreement.type>
<currency_Unit.name>{currency}</currency_Unit.name><price_Measure_Unit.name>MWH</price_Measure_Unit.name>
<curveType>{curve}</curveType>
<Period><timeInterval><start>{start:%Y-%m-%dT%H:%MZ}</start><end>{end:%Y-%m-%dT%H:%MZ}</end></timeInterval>
<resolution>PT{step_min}M</resolution>{pts}</Period></TimeSeries>""")
    return f"""<?xml version="1.0" encoding="utf-8"?>
<Publication_MarketDocument xmlns="{A44_NS}">
<mRID>4d1c4c4b1e1f4a3e8b3f1d7a6a5b9c01</mRID><revisionNumber>1</revisionNumber><type>A44</type>
<sender_MarketParticipant.mRID codingScheme="A01">10X1001A1001A450</sender_MarketParticipant.mRID>
<sender_MarketParticipant.marketRole.type>A32</sender_MarketParticipant.marketRole.type>
<receiver_MarketParticipant.mRID codingScheme="A01">10X1001A1001A450</receiver_MarketParticipant.mRID>
<receiver_MarketParticipant.marketRole.type>A33</receiver_MarketParticipant.marketRole.type>
<createdDateTime>{created}</createdDateTime>
{''.join(body)}
</Publication_MarketDocument>""".encode()


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 700), st.sampled_from([15, 30, 60]), st.sampled_from(["A01", "A03"]),
       st.data())
def test_a44_round_trips(day, step_min, curve, data):
    start = utc(2024, 1, 1, 23) + timedelta(days=day)
    slots = 24 * 60 // step_min
    prices = data.draw(st.lists(st.one_of(st.none(), st.decimals(-500, 4000, places=2)),
                                min_size=slots, max_size=slots))
    points = {i + 1: p for i, p in enumerate(prices) if p is not None}
    got = rows(parse_entsoe_a44(a44_xml([(start, step_min, points, slots)], curve=curve)))
    step = timedelta(minutes=step_min)
    expected, last = [], None
    for i, p in enumerate(prices):
        if p is None and curve == "A03":
            p = last
        if p is None:
            continue
        last = p
        expected.append((start + i * step, start + (i + 1) * step, float(p)))
    assert got == expected


def test_a44_pt15m_a03_fills_omitted_positions_and_sets_published():
    start = utc(2025, 3, 30, 23)              # delivery day 31.03.2025 (CEST)
    xml = a44_xml([(start, 15, {1: "73.24", 2: "69.79", 5: "-5.00"}, 8)], curve="A03",
                  created="2025-03-30T10:50:00Z")
    ivs = parse_entsoe_a44(xml)
    assert [iv.price for iv in ivs] == [73.24, 69.79, 69.79, 69.79, -5.0, -5.0, -5.0, -5.0]
    assert ivs[3].start == utc(2025, 3, 30, 23, 45) and ivs[3].resolution == timedelta(minutes=15)
    # 13:00 CEST on 30.03 is 11:00Z; the document existed at 10:50Z: the earlier wins.
    assert {iv.published for iv in ivs} == {utc(2025, 3, 30, 10, 50)}
    late = parse_entsoe_a44(a44_xml([(start, 60, {1: 1}, 1)], created="2025-04-02T08:00:00Z"))
    assert late[0].published == utc(2025, 3, 30, 11)


def test_a44_refuses_malformed_documents():
    with pytest.raises(FeedError) as e:
        parse_entsoe_a44(b"<html>")
    assert e.value.kind == "malformed"
    with pytest.raises(FeedError) as e:
        parse_entsoe_a44(a44_xml([(utc(2025, 1, 1), 15, {99: 1}, 4)]))
    assert e.value.kind == "malformed" and "position 99" in str(e.value)
    with pytest.raises(FeedError, match="resolution"):
        parse_entsoe_a44(a44_xml([(utc(2025, 1, 1), 15, {1: 1}, 4)]).replace(b"PT15M", b"P1Y"))


ACK_XML = b"""<?xml version="1.0" encoding="utf-8"?>
<Acknowledgement_MarketDocument xmlns="urn:iec62325.351:tc57wg16:451-1:acknowledgementdocument:7:0">
<mRID>1b4d3b3a-5a0f-4b0e-9c4d-0c1d2e3f4a5b</mRID><createdDateTime>2025-03-30T12:00:00Z</createdDateTime>
<sender_MarketParticipant.mRID codingScheme="A01">10X1001A1001A450</sender_MarketParticipant.mRID>
<sender_MarketParticipant.marketRole.type>A32</sender_MarketParticipant.marketRole.type>
<receiver_MarketParticipant.mRID codingScheme="A01">10X1001A1001A39I</receiver_MarketParticipant.mRID>
<receiver_MarketParticipant.marketRole.type>A39</receiver_MarketParticipant.marketRole.type>
<received_MarketDocument.createdDateTime>2025-03-30T12:00:00Z</received_MarketDocument.createdDateTime>
<Reason><code>999</code><text>No matching data found for Data item Day-ahead Prices [12.1.D] (10YNL----------L) and interval 2025-03-30T22:00:00.000Z/2025-04-01T22:00:00.000Z.</text></Reason>
</Acknowledgement_MarketDocument>"""


def test_a44_acknowledgement_is_missing_data():
    with pytest.raises(FeedError) as e:
        parse_entsoe_a44(ACK_XML)
    assert e.value.kind == "missing" and "No matching data found" in str(e.value)


# ---------------------------------------------------------------------------
# ERCOT public API shape (fields + positional rows)

DAM_FIELDS = [{"name": "deliveryDate", "label": "Delivery Date", "dataType": "DATE"},
              {"name": "hourEnding", "label": "Hour Ending", "dataType": "STRING"},
              {"name": "settlementPoint", "label": "Settlement Point", "dataType": "STRING"},
              {"name": "settlementPointPrice", "label": "Settlement Point Price", "dataType": "DOUBLE"},
              {"name": "DSTFlag", "label": "DST Flag", "dataType": "BOOLEAN"}]


def ercot_dam_doc(rows_, total_pages=1, page=1):
    return {"_meta": {"totalRecords": len(rows_), "pageSize": 1000, "totalPages": total_pages,
                      "currentPage": page},
            "report": {"reportEMILId": "NP4-190-CD", "reportName": "DAM Settlement Point Prices"},
            "fields": DAM_FIELDS, "data": rows_}


# The fall-back day 2023-11-05 at HB_HUBAVG with the prices of the green-dcc ERCOT file:
# hour ending 02 twice, the repeated one flagged.
FALL_BACK_DAM = [["2023-11-05", "01:00", "HB_HUBAVG", 20.78, False],
                 ["2023-11-05", "02:00", "HB_HUBAVG", 22.49, False],
                 ["2023-11-05", "02:00", "HB_HUBAVG", 25.61, True],
                 ["2023-11-05", "03:00", "HB_HUBAVG", 23.39, False],
                 ["2023-11-05", "04:00", "HB_HUBAVG", 24.27, False],
                 ["2023-11-05", "01:00", "HB_NORTH", 19.00, False]]


def test_ercot_dam_matches_the_green_dcc_file_across_fall_back():
    api = parse_ercot_spp(ercot_dam_doc(FALL_BACK_DAM), settlement_point="HB_HUBAVG")
    csv_ = load_price_csv(DATA / "US-TEX-ERCO_2023_excerpt.csv")
    from_file = [r for r in rows(csv_) if utc(2023, 11, 5, 5) <= r[0] < utc(2023, 11, 5, 10)]
    assert rows(api) == from_file
    assert api[2].published == utc(2023, 11, 4, 18, 30)        # 13:30 CDT the day before
    assert all(iv.currency == "USD" for iv in api)


def test_ercot_rt_fifteen_minute_intervals_are_known_when_settled():
    doc = {"fields": [{"name": n} for n in ("deliveryDate", "deliveryHour", "deliveryInterval",
                                            "settlementPoint", "settlementPointType",
                                            "settlementPointPrice", "DSTFlag")],
           "data": [["2024-03-10", 1, 4, "HB_NORTH", "HU", 21.5, "N"],
                    ["2024-03-10", 4, 1, "HB_NORTH", "HU", -3.25, "N"],   # no hour ending 03: 03:00 CDT
                    ["2024-11-03", 2, 1, "HB_NORTH", "HU", 30.0, "N"],
                    ["2024-11-03", 2, 1, "HB_NORTH", "HU", 31.0, "Y"]]}
    ivs = parse_ercot_spp(doc)
    assert rows(ivs) == [
        (utc(2024, 3, 10, 6, 45), utc(2024, 3, 10, 7), 21.5),
        (utc(2024, 3, 10, 8), utc(2024, 3, 10, 8, 15), -3.25),
        (utc(2024, 11, 3, 6), utc(2024, 11, 3, 6, 15), 30.0),
        (utc(2024, 11, 3, 7), utc(2024, 11, 3, 7, 15), 31.0)]
    assert all(iv.published == iv.end for iv in ivs)


def test_ercot_malformed_answers():
    for doc in ({"data": []}, {"fields": [{"name": "deliveryDate"}], "data": []},
                {"fields": DAM_FIELDS, "data": [["2023-11-05", "25:00", "X", 1.0, False]]},
                {"fields": DAM_FIELDS, "data": [["2023-11-05", "01:00", "X"]]}):
        with pytest.raises(FeedError) as e:
            parse_ercot_spp(doc)
        assert e.value.kind == "malformed"


# ---------------------------------------------------------------------------
# Static and replay feeds


def test_static_feed_covers_the_current_hour():
    (iv,) = run(StaticFeed(42.5, "EUR").fetch(utc(2025, 5, 1, 10, 17, 3)))
    assert (iv.start, iv.end, iv.price, iv.currency) == (utc(2025, 5, 1, 10), utc(2025, 5, 1, 11), 42.5, "EUR")
    assert price_at([iv], utc(2025, 5, 1, 10, 59)) is iv


def test_replay_feed_shows_day_ahead_prices_only_after_publication():
    ivs = load_price_csv(DATA / "US-TEX-ERCO_2023_excerpt.csv", timezone="America/Chicago",
                         publication="day_ahead")
    feed = ReplayFeed(ivs)
    before = run(feed.fetch(utc(2023, 11, 4, 18, 29)))
    after = run(feed.fetch(utc(2023, 11, 4, 18, 30)))
    assert max(iv.start for iv in before) < utc(2023, 11, 5, 5)
    assert utc(2023, 11, 5, 7) in {iv.start for iv in after}   # tomorrow's, known now
    assert all(iv.known_at(utc(2023, 11, 4, 18, 30)) for iv in after)
    with pytest.raises(FeedError) as e:
        run(feed.fetch(utc(2023, 7, 1)))
    assert e.value.kind == "missing"


def test_replay_feed_shifts_a_past_period_to_now():
    ivs = load_price_csv(DATA / "DE-LU_2023_synthetic.csv", timezone="Europe/Berlin")
    now = utc(2026, 2, 10, 12, 20)
    feed = ReplayFeed(ivs, replay_from=utc(2023, 7, 2))
    got = run(feed.fetch(now))
    hit = price_at(got, now)
    assert hit.price == -500.0                     # 2023-07-02 14:00 CEST = 12:00Z
    assert hit.start == utc(2026, 2, 10, 12)
    assert feed.shift(now) == utc(2026, 2, 10) - utc(2023, 7, 2)
    later = run(feed.fetch(now + H))               # the shift stays fixed
    assert price_at(later, now + H).price == -399.0


# ---------------------------------------------------------------------------
# A real HTTP server on a loopback port


class Recorder(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.routes = {}
        self.seen = []   # (path, query dict, headers dict)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (stdlib name)
        parts = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(parts.query))
        self.server.seen.append((parts.path, query, dict(self.headers)))
        route = self.server.routes.get(parts.path)
        status, ctype, body = route(query, self.headers) if route else (404, "text/plain", b"no route")
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = Recorder()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def json_route(doc, status=200):
    return lambda q, h: (status, "application/json", json.dumps(doc).encode())


def test_http_json_poll_sends_headers_from_env(server, monkeypatch):
    monkeypatch.setenv("GRIDMINER_TEST_PRICE_KEY", "s3cret-value")
    server.routes["/now"] = json_route({"data": [{"price": "-12.5", "unit": "EUR/MWh"}]})
    feed = HTTPJSONFeed(server.url + "/now", price_path="data.0.price", currency="EUR",
                        headers_env={"X-Api-Key": "GRIDMINER_TEST_PRICE_KEY"})
    now = utc(2025, 6, 1, 9, 5)
    (iv,) = run(feed.fetch(now))
    assert (iv.start, iv.end, iv.price, iv.published) == (now, now + H, -12.5, now)
    assert server.seen[-1][2]["X-Api-Key"] == "s3cret-value"


def test_http_json_items_with_start_and_end(server):
    server.routes["/list"] = json_route({"result": {"prices": [
        {"from": "2025-06-01T10:00:00Z", "to": "2025-06-01T10:15:00Z", "v": 30.1},
        {"from": "2025-06-01T10:15:00+00:00", "to": "2025-06-01T10:30:00Z", "v": None},
        {"from": 1748773800, "to": 1748774700000, "v": 29}]}})
    feed = HTTPJSONFeed(server.url + "/list", items_path="result.prices", start_path="from",
                        end_path="to", price_path="v")
    ivs = run(feed.fetch(utc(2025, 6, 1, 10, 40)))
    assert rows(ivs) == [(utc(2025, 6, 1, 10), utc(2025, 6, 1, 10, 15), 30.1),
                         (utc(2025, 6, 1, 10, 30), utc(2025, 6, 1, 10, 45), 29.0)]


def test_http_json_failures_have_kinds(server, monkeypatch):
    now = utc(2025, 6, 1)
    server.routes["/bad"] = lambda q, h: (200, "application/json", b"{not json")
    server.routes["/err"] = json_route({"error": "boom"}, status=503)
    server.routes["/nofield"] = json_route({"data": []})
    cases = [(server.url + "/bad", "malformed"), (server.url + "/err", "error"),
             (server.url + "/nofield", "missing")]
    for url, kind in cases:
        with pytest.raises(FeedError) as e:
            run(HTTPJSONFeed(url, price_path="data.0.price").fetch(now))
        assert e.value.kind == kind, url
    monkeypatch.delenv("GRIDMINER_TEST_UNSET", raising=False)
    with pytest.raises(FeedError, match="GRIDMINER_TEST_UNSET"):
        run(HTTPJSONFeed(server.url + "/bad", price_path="p",
                         headers_env={"Authorization": "GRIDMINER_TEST_UNSET"}).fetch(now))


def test_dead_port_is_unreachable():
    with pytest.raises(FeedError) as e:
        run(HTTPJSONFeed(f"http://127.0.0.1:{free_port()}/p", price_path="p", timeout=2).fetch(utc(2025, 1, 1)))
    assert e.value.kind == "unreachable"


def test_json_path():
    doc = {"a": [{"b": 1}, {"b": 2}]}
    assert json_path(doc, "a.1.b") == 2 and json_path(doc, "a.-1.b") == 2 and json_path(doc, "") is doc
    with pytest.raises(FeedError, match="'2'"):
        json_path(doc, "a.2.b")


def test_entsoe_feed_builds_the_documented_query(server, monkeypatch):
    monkeypatch.setenv("GRIDMINER_TEST_ENTSOE", "tok-123")
    start = utc(2025, 3, 30, 22)      # delivery day 31.03.2025, CEST
    doc = a44_xml([(start, 15, {1: 50.0, 3: 40.0}, 96)], curve="A03", created="2025-03-30T10:45:00Z")
    server.routes["/api"] = lambda q, h: (200, "text/xml", doc)
    feed = EntsoeFeed("10YNL----------L", token_env="GRIDMINER_TEST_ENTSOE", base_url=server.url + "/api")
    now = utc(2025, 3, 30, 12)
    ivs = run(feed.fetch(now))
    _, query, _ = server.seen[-1]
    assert query == {"documentType": "A44", "in_Domain": "10YNL----------L",
                     "out_Domain": "10YNL----------L", "periodStart": "202503292300",
                     "periodEnd": "202503312200", "securityToken": "tok-123"}
    assert len(ivs) == 96 and ivs[1].price == 50.0 and ivs[2].price == 40.0 and ivs[-1].price == 40.0
    assert all(iv.published == utc(2025, 3, 30, 10, 45) for iv in ivs)
    assert price_at(ivs, utc(2025, 3, 30, 22, 20)).price == 50.0   # known the day before


def test_entsoe_feed_acknowledgement_and_http_errors(server, monkeypatch):
    monkeypatch.setenv("GRIDMINER_TEST_ENTSOE", "tok-123")
    server.routes["/ack"] = lambda q, h: (200, "text/xml", ACK_XML)
    server.routes["/ack400"] = lambda q, h: (400, "text/xml", ACK_XML)
    server.routes["/401"] = lambda q, h: (401, "text/html", b"<html>Unauthorized</html>")
    for path, kind in (("/ack", "missing"), ("/ack400", "missing"), ("/401", "error")):
        feed = EntsoeFeed("10YNL----------L", token_env="GRIDMINER_TEST_ENTSOE", base_url=server.url + path)
        with pytest.raises(FeedError) as e:
            run(feed.fetch(utc(2025, 3, 30, 12)))
        assert e.value.kind == kind
        assert "tok-123" not in str(e.value)
    monkeypatch.delenv("GRIDMINER_TEST_ENTSOE")
    with pytest.raises(FeedError, match="GRIDMINER_TEST_ENTSOE"):
        run(EntsoeFeed("10YNL----------L", token_env="GRIDMINER_TEST_ENTSOE",
                       base_url=server.url + "/ack").fetch(utc(2025, 3, 30, 12)))


def test_ercot_feed_pages_and_credentials(server, monkeypatch):
    monkeypatch.setenv("ERCOT_SUBSCRIPTION_KEY", "sub-key")
    monkeypatch.setenv("ERCOT_API_TOKEN", "id-token")

    def dam(query, headers):
        page = int(query["page"])
        part = FALL_BACK_DAM[:3] if page == 1 else FALL_BACK_DAM[3:]
        return 200, "application/json", json.dumps(ercot_dam_doc(part, total_pages=2, page=page)).encode()

    server.routes["/api/public-reports/np4-190-cd/dam_stlmnt_pnt_prices"] = dam
    feed = ErcotFeed("HB_HUBAVG", base_url=server.url + "/api/public-reports")
    ivs = run(feed.fetch(utc(2023, 11, 4, 19)))
    assert [iv.price for iv in ivs] == [20.78, 22.49, 25.61, 23.39, 24.27]
    assert [q["page"] for _, q, _ in server.seen] == ["1", "2"]
    _, query, headers = server.seen[0]
    assert query["settlementPoint"] == "HB_HUBAVG" and query["deliveryDateFrom"] == "2023-11-04"
    assert headers["Ocp-Apim-Subscription-Key"] == "sub-key"
    assert headers["Authorization"] == "Bearer id-token"


def test_ercot_rt_feed_carries_the_latest_settled_price_into_now(server, monkeypatch):
    monkeypatch.setenv("ERCOT_SUBSCRIPTION_KEY", "sub-key")
    monkeypatch.setenv("ERCOT_API_TOKEN", "id-token")
    doc = {"_meta": {"totalPages": 1},
           "fields": [{"name": n} for n in ("deliveryDate", "deliveryHour", "deliveryInterval",
                                            "settlementPoint", "settlementPointType",
                                            "settlementPointPrice", "DSTFlag")],
           "data": [["2025-07-01", 14, 1, "HB_WEST", "HU", 45.0, False],
                    ["2025-07-01", 14, 2, "HB_WEST", "HU", 1250.5, False]]}
    server.routes["/rt/np6-905-cd/spp_node_zone_hub"] = json_route(doc)
    feed = ErcotFeed("HB_WEST", market="rt", base_url=server.url + "/rt")
    now = utc(2025, 7, 1, 18, 37)       # 13:37 CDT: HE14 interval 3, not settled yet
    ivs = run(feed.fetch(now))
    current = price_at(ivs, now)
    assert current.price == 1250.5 and current.start == utc(2025, 7, 1, 18, 30)
    assert current.published == now


def test_carry_latest_only_fills_a_gap_at_now():
    q = timedelta(minutes=15)
    t = utc(2025, 7, 1, 18)
    settled = [PriceInterval(t, t + q, 10.0, "USD", q, published=t + q)]
    covering = [PriceInterval(t, t + q, 10.0, "USD", q, published=t)]
    assert carry_latest(covering, t + timedelta(minutes=5), q) == covering   # now is priced already
    filled = carry_latest(settled, t + 2 * q + timedelta(minutes=1), q)
    assert rows(filled) == [(t, t + q, 10.0), (t + 2 * q, t + 3 * q, 10.0)]
    assert carry_latest(settled, t + 2 * H, q) == settled           # too old to carry
    pending = settled + [PriceInterval(t + q, t + 2 * q, 99.0, "USD", q, published=t + 2 * q)]
    got = carry_latest(pending, t + q + timedelta(minutes=3), q)    # the unsettled one is dropped
    assert rows(got) == [(t, t + q, 10.0), (t + q, t + 2 * q, 10.0)]


def test_ercot_feed_without_token_fails_clearly(monkeypatch):
    monkeypatch.setenv("ERCOT_SUBSCRIPTION_KEY", "sub-key")
    monkeypatch.delenv("ERCOT_API_TOKEN", raising=False)
    with pytest.raises(FeedError, match="ERCOT_API_TOKEN"):
        run(ErcotFeed("HB_WEST", base_url="http://127.0.0.1:9").fetch(utc(2025, 1, 1)))


# ---------------------------------------------------------------------------
# gridstatus (optional)


def test_gridstatus_rows_to_intervals_without_pandas():
    central = ZoneInfo("America/Chicago")
    recs = [{"Interval Start": datetime(2024, 11, 3, 1, tzinfo=central),
             "Interval End": datetime(2024, 11, 3, 1, tzinfo=central).astimezone(UTC) + H,
             "Location": "HB_NORTH", "Market": "DAY_AHEAD_HOURLY", "SPP": -1.5},
            {"Interval Start": datetime(2024, 11, 3, 1, fold=1, tzinfo=central),
             "Interval End": datetime(2024, 11, 3, 2, tzinfo=central),
             "Location": "HB_NORTH", "Market": "DAY_AHEAD_HOURLY", "SPP": float("nan")},
            {"Interval Start": datetime(2024, 11, 3, 1, tzinfo=central),
             "Interval End": datetime(2024, 11, 3, 2, tzinfo=central),
             "Location": "HB_SOUTH", "Market": "DAY_AHEAD_HOURLY", "SPP": 3.0}]
    ivs = intervals_from_records(recs, location="HB_NORTH")
    assert rows(ivs) == [(utc(2024, 11, 3, 6), utc(2024, 11, 3, 7), -1.5)]
    with pytest.raises(FeedError, match="price column"):
        intervals_from_records([{"Interval Start": 1}])


def test_gridstatus_missing_package_says_how_to_install():
    try:
        import gridstatus  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="pip install"):
            GridstatusFeed("ERCOT", "HB_NORTH")
    else:
        assert GridstatusFeed("ERCOT", "HB_NORTH").location == "HB_NORTH"


# ---------------------------------------------------------------------------
# make_feed from [site.feed] tables

SITE_USD = SiteSpec(name="texas", capacity_mw=10, efficiency_j_per_th=20, currency="USD")
SITE_EUR = SiteSpec(name="berlin", capacity_mw=5, efficiency_j_per_th=20, currency="EUR",
                    usd_per_unit=1.08)


def test_make_feed_builds_each_kind(tmp_path):
    shutil.copy(DATA / "DE-LU_2023_synthetic.csv", tmp_path / "de.csv")
    made = {
        "static": make_feed({"kind": "static", "price": 30}, base_dir=tmp_path, site=SITE_USD),
        "csv": make_feed({"kind": "csv", "path": "de.csv", "timezone": "Europe/Berlin",
                          "publication": "day_ahead", "replay_from": "2023-07-02"},
                         base_dir=tmp_path, site=SITE_EUR),
        "http_json": make_feed({"kind": "http_json", "url": "http://127.0.0.1:1/p", "price_path": "p",
                                "headers_env": {"X-Key": "K"}}, base_dir=tmp_path, site=SITE_USD),
        "entsoe": make_feed({"kind": "entsoe", "area": "10Y1001A1001A82H"}, base_dir=tmp_path,
                            site=SITE_EUR),
        "ercot": make_feed({"kind": "ercot", "settlement_point": "HB_WEST", "market": "rt"},
                           base_dir=tmp_path, site=SITE_USD),
    }
    assert set(made) | {"gridstatus"} == set(FEED_KEYS)
    assert isinstance(made["csv"], ReplayFeed) and made["csv"].replay_from == utc(2023, 7, 2)
    assert isinstance(made["ercot"], ErcotFeed) and made["ercot"].market == "rt"
    got = run(made["csv"].fetch(utc(2026, 1, 5, 12, 30)))
    assert price_at(got, utc(2026, 1, 5, 12, 30)).price == -500.0


def test_feed_for_site_with_only_a_price_file(tmp_path):
    shutil.copy(DATA / "US-TEX-ERCO_2023_excerpt.csv", tmp_path / "US-TEX-ERCO_2023.csv")
    table = {"kind": "csv", "path": "US-TEX-ERCO_2023.csv", "timezone": None,
             "publication": "day_ahead", "currency": "USD"}
    site = SiteSpec(name="texas", capacity_mw=10, efficiency_j_per_th=20, timezone="America/Chicago",
                    feed=table)
    feed = feed_for_site(site, tmp_path)
    assert price_at(run(feed.fetch(utc(2023, 11, 5, 7, 10))), utc(2023, 11, 5, 7, 10)).price == 25.61
    # a file named for its market: the zone is inferred even when the site has none
    inferred = feed_for_site(SiteSpec(name="texas", capacity_mw=10, efficiency_j_per_th=20, feed=table), tmp_path)
    assert inferred.intervals == feed.intervals
    # rows carry offsets, not a market: a file of an unknown market must name its zone for day-ahead
    shutil.copy(DATA / "US-TEX-ERCO_2023_excerpt.csv", tmp_path / "hub.csv")
    unknown = dict(table, path="hub.csv")
    with pytest.raises(ValueError, match="market_timezone"):
        feed_for_site(SiteSpec(name="texas", capacity_mw=10, efficiency_j_per_th=20, feed=unknown), tmp_path)
    with pytest.raises(ValueError, match="no price feed"):
        feed_for_site(SiteSpec(name="x", capacity_mw=1, efficiency_j_per_th=20), tmp_path)


@pytest.mark.parametrize("table, message", [
    ({"kind": "teleport"}, "kind must be one of"),
    ({}, "kind must be one of"),
    ({"kind": "static"}, "missing key 'price'"),
    ({"kind": "csv"}, "missing key 'path'"),
    ({"kind": "http_json", "url": "http://x"}, "missing key 'price_path'"),
    ({"kind": "entsoe"}, "missing key 'area'"),
    ({"kind": "ercot"}, "missing key 'settlement_point'"),
    ({"kind": "gridstatus", "iso": "ERCOT"}, "missing key 'location'"),
    ({"kind": "static", "price": 1, "prise": 2}, "unknown key 'prise'"),
    ({"kind": "static", "price": "cheap"}, "price must be a number"),
    ({"kind": "static", "price": 1, "currency": "EUR"}, "feed prices are in EUR"),
    ({"kind": "csv", "path": "nope.csv"}, "no price file"),
    ({"kind": "ercot", "settlement_point": "HB_WEST", "market": "spot"}, "market must be one of"),
    ({"kind": "http_json", "url": "http://x", "price_path": "p", "items_path": "i"}, "start_path"),
    ({"kind": "http_json", "url": "http://x", "price_path": "p", "headers_env": {"A": 1}}, "headers_env"),
])
def test_make_feed_rejects_bad_tables(tmp_path, table, message):
    with pytest.raises(ValueError, match=message):
        make_feed(table, base_dir=tmp_path, site=SITE_USD)


def test_entsoe_area_must_be_an_eic_code(tmp_path):
    with pytest.raises(ValueError, match="EIC"):
        make_feed({"kind": "entsoe", "area": "NL"}, base_dir=tmp_path, site=SITE_EUR)


def test_csv_feed_currency_must_match_the_site(tmp_path):
    shutil.copy(DATA / "DE-LU_2023_synthetic.csv", tmp_path / "de.csv")
    with pytest.raises(ValueError, match="EUR"):
        make_feed({"kind": "csv", "path": "de.csv", "timezone": "Europe/Berlin"},
                  base_dir=tmp_path, site=SITE_USD)


def test_csv_feed_stamps_day_ahead_in_the_sites_market_zone(tmp_path):
    """A naive-UTC CAISO file replayed live: the site's zone (or the table's market_timezone)
    places publication at 13:30 Pacific the day before, not 13:30 UTC (8 h of look-ahead)."""
    shutil.copy(DATA / "US-CAL-CISO_2024_head.csv", tmp_path / "caiso.csv")
    table = {"kind": "csv", "path": "caiso.csv", "timezone": "UTC", "publication": "day_ahead"}
    la = SiteSpec(name="ca", capacity_mw=1, efficiency_j_per_th=20, timezone="America/Los_Angeles")
    # 2023-12-31 08:00Z is the first hour of Dec 31 in LA: published Dec 30 13:30 PST = 21:30Z
    before, after = utc(2023, 12, 30, 21, 29), utc(2023, 12, 30, 21, 30)
    hour = utc(2023, 12, 31, 8)
    for site, tbl in ((la, table),
                      (SiteSpec(name="ca", capacity_mw=1, efficiency_j_per_th=20),
                       {**table, "market_timezone": "America/Los_Angeles"})):
        first_of_dec31 = {iv.start: iv for iv in make_feed(tbl, base_dir=tmp_path, site=site).intervals}[hour]
        assert first_of_dec31.published == after
        assert not first_of_dec31.known_at(before) and first_of_dec31.known_at(after)
    with pytest.raises(ValueError, match="market_timezone"):
        make_feed(table, base_dir=tmp_path, site=SiteSpec(name="ca", capacity_mw=1, efficiency_j_per_th=20))


def test_sites_with_the_same_market_request_share_one_feed_object():
    from miner.sched.feeds import feeds_for_sites
    from miner.sched.sites import parse_sites

    def site(name: str, feed: dict) -> dict:
        return {"name": name, "capacity_mw": 1.0, "efficiency_j_per_th": 20.0, "feed": feed}

    api = {"kind": "http_json", "url": "http://prices.example/ercot/hb_north", "price_path": "price"}
    fleet = parse_sites({"economics": {"hashprice_usd_per_th_day": 0.05}, "site": [
        site("a", api), site("b", dict(api)), site("c", dict(api, url="http://prices.example/ercot/hb_west")),
        site("d", dict(api, price_path="data.price")), site("e", {"kind": "static", "price": 40.0}),
        site("f", {"kind": "static", "price": 40.0})]}, base_dir=Path("."))
    feeds = feeds_for_sites(fleet.sites, Path("."))
    assert feeds["a"] is feeds["b"]
    assert len({id(feeds[n]) for n in "acd"}) == 3            # another URL, another path: their own
    assert feeds["e"] is not feeds["f"]                       # nothing to fetch: nothing to share
