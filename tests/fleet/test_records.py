"""Fleet bus records: canonical JSON, Ed25519 signatures, validation with bounded reasons."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from miner.fleet import records
from miner.fleet.records import (Ack, DeviceReport, RecordError, SiteReport, decode_desired, decode_report,
                                 encode_desired, encode_report, load_public_key, load_signing_key,
                                 make_desired, new_signing_key, public_key_hex, signing_key_pem)
from miner.sched.model import REASONS

KEY = new_signing_key()
PUBLIC = load_public_key(public_key_hex(KEY))
OTHER = new_signing_key()
T0 = datetime(2026, 12, 7, 8, 0, tzinfo=timezone.utc)

site_names = st.from_regex(records.SITE_NAME, fullmatch=True)
times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2200, 1, 1),
                     timezones=st.just(timezone.utc))


@st.composite
def desired_states(draw):
    return make_desired(draw(site_names), epoch=draw(st.integers(1, (1 << 31) - 1)),
                        seq=draw(st.integers(1, records.MAX_SEQ)),
                        level=draw(st.floats(0.0, 1.0)), reason=draw(st.sampled_from(REASONS)),
                        issued_at=draw(times), ttl_seconds=draw(st.floats(0, 86_400)),
                        hashprice=draw(st.none() | st.floats(0, 10, allow_nan=False)),
                        leader=draw(st.text(min_size=1, max_size=40)))


def desired(**kw):
    args = dict(epoch=3, seq=1, level=0.5, reason="price_below_breakeven", issued_at=T0, ttl_seconds=300,
                hashprice=0.05, leader="fleet-a")
    args.update(kw)
    return make_desired(kw.pop("site", "texas"), **{k: v for k, v in args.items() if k != "site"})


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(desired_states())
def test_desired_round_trips_through_its_signed_canonical_json(state):
    data = encode_desired(state, KEY)
    assert json.loads(data)["revision"] == (state.epoch << 32) | state.seq
    assert decode_desired(data, site=state.site, public_key=PUBLIC) == state


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(desired_states(), st.data())
def test_any_byte_mutation_of_a_signed_record_is_refused(state, data):
    signed = bytearray(encode_desired(state, KEY))
    index = data.draw(st.integers(0, len(signed) - 1))
    kind = data.draw(st.sampled_from(["replace", "delete", "insert"]))
    if kind == "replace":
        signed[index] = data.draw(st.integers(0, 255).filter(lambda b: b != signed[index]))
    elif kind == "delete":
        del signed[index]
    else:
        signed.insert(index, data.draw(st.integers(0, 255)))
    with pytest.raises(RecordError) as e:
        decode_desired(bytes(signed), site=state.site, public_key=PUBLIC)
    assert e.value.reason in ("malformed", "bad_signature", "wrong_site")


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(desired_states(), st.sampled_from(["level", "reason", "revision", "seq", "epoch", "valid_until", "leader",
                                          "hashprice_usd_per_th_day", "issued_at"]))
def test_a_changed_field_re_encoded_canonically_fails_the_signature(state, field):
    obj = json.loads(encode_desired(state, KEY))
    changes = {"level": 1.0 if obj["level"] != 1.0 else 0.0, "reason": "optimizer" if obj["reason"] != "optimizer"
               else "hysteresis", "valid_until": "2999-01-01T00:00:00Z", "leader": obj["leader"] + "x",
               "hashprice_usd_per_th_day": None if obj["hashprice_usd_per_th_day"] is not None else 1.0,
               "issued_at": "1999-01-01T00:00:00Z"}
    if field in ("revision", "seq", "epoch"):  # a consistent forged revision: the signature catches it
        obj["epoch"] += 1
        obj["revision"] = (obj["epoch"] << 32) | obj["seq"]
    else:
        obj[field] = changes[field]
    with pytest.raises(RecordError) as e:
        decode_desired(records.canonical_json(obj), site=state.site, public_key=PUBLIC)
    assert e.value.reason == "bad_signature"


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600) | st.text(max_size=300).map(str.encode)
       | st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                      lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                    max_size=6))
       .map(lambda obj: json.dumps(obj).encode()))
def test_garbage_raises_only_record_error(data):
    for decode in (lambda: decode_desired(data, site="texas", public_key=PUBLIC), lambda: decode_report(data)):
        try:
            decode()
        except RecordError as e:
            assert e.reason in records.REJECT_REASONS


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(desired_states(), st.sampled_from(sorted(records.DESIRED_FIELDS - {"sig"})),
       st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30) | st.lists(st.integers()))
def test_fields_of_any_value_raise_only_record_error(state, field, value):
    obj = json.loads(encode_desired(state, KEY))
    assume(json.dumps(obj[field]) != json.dumps(value))
    obj[field] = value
    try:
        data = records.canonical_json(obj)
    except ValueError:   # NaN: cannot even be written canonically
        data = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(RecordError):
        decode_desired(data, site=state.site, public_key=PUBLIC)


def test_reasons_each_named():
    good = encode_desired(desired(), KEY)
    assert decode_desired(good, site="texas", public_key=PUBLIC, now=T0 + timedelta(seconds=299)).level == 0.5
    cases = {
        "wrong_site": lambda: decode_desired(good, site="paris", public_key=PUBLIC),
        "bad_signature": lambda: decode_desired(encode_desired(desired(), OTHER), site="texas", public_key=PUBLIC),
        "expired": lambda: decode_desired(good, site="texas", public_key=PUBLIC, now=T0 + timedelta(seconds=300)),
        "malformed": lambda: decode_desired(b'{"v":1}', site="texas", public_key=PUBLIC),
    }
    for reason, call in cases.items():
        with pytest.raises(RecordError) as e:
            call()
        assert e.value.reason == reason, reason
    # Pretty-printed (not canonical) JSON of a valid record is refused as malformed.
    with pytest.raises(RecordError, match="canonical") as e:
        decode_desired(json.dumps(json.loads(good), indent=1).encode(), site="texas", public_key=PUBLIC)


def test_bad_fields_are_refused_when_made():
    for kw in ({"level": 1.5}, {"level": float("nan")}, {"reason": "because"}, {"seq": 0}, {"epoch": 0},
               {"seq": 1 << 32}, {"hashprice": -1.0}, {"leader": ""}, {"site": "new york"}, {"site": "x" * 65}):
        with pytest.raises(ValueError):
            desired(**kw)


def test_keys_load_from_pem_or_hex_seed_and_public_keys_from_hex_or_base64():
    import base64

    seed = bytes(range(32))
    from_hex = load_signing_key(seed.hex().encode() + b"\n")
    from_pem = load_signing_key(signing_key_pem(from_hex))
    assert public_key_hex(from_hex) == public_key_hex(from_pem)
    raw = bytes.fromhex(public_key_hex(from_hex))
    data = encode_desired(desired(), from_pem)
    for text in (raw.hex(), base64.b64encode(raw).decode()):
        assert decode_desired(data, site="texas", public_key=load_public_key(text)).seq == 1
    for bad in (b"", b"00" * 31, b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----", b"zz" * 32):
        with pytest.raises(ValueError) as e:
            load_signing_key(bad)
        assert "zz" not in str(e.value)
    for bad in ("", "00" * 31, "not a key"):
        with pytest.raises(ValueError):
            load_public_key(bad)


def report(**kw):
    args = dict(site="texas", at=T0, bus_connected=True, mode="following", applied_revision=(3 << 32) | 1,
                desired_level=0.5, level=0.5, hashing=True, hashrate_hs=1.2e14, power_w=3250.0,
                devices=(DeviceReport("s19-01", True, True, True, 1.2e14, 3250.0, 0.5),),
                ack=Ack((3 << 32) | 1, "applied", "1 of 1 devices", T0))
    args.update(kw)
    return SiteReport(**args)


@settings(max_examples=200)
@given(st.builds(report, site=site_names, at=times, bus_connected=st.booleans(),
                 mode=st.sampled_from(records.MODES), applied_revision=st.none() | st.integers(1, records.MAX_REVISION),
                 desired_level=st.none() | st.floats(0, 1), level=st.floats(0, 1), hashing=st.booleans(),
                 hashrate_hs=st.floats(0, 1e20), power_w=st.none() | st.floats(0, 1e9),
                 devices=st.lists(st.builds(DeviceReport, st.text(min_size=1, max_size=20), st.booleans(),
                                            st.booleans(), st.booleans(), st.floats(0, 1e16),
                                            st.none() | st.floats(0, 1e5), st.none() | st.floats(0, 1)),
                                  max_size=5).map(tuple),
                 ack=st.none() | st.builds(Ack, st.integers(1, records.MAX_REVISION),
                                           st.sampled_from(records.ACK_OUTCOMES), st.text(max_size=50), times)))
def test_reports_round_trip(rep):
    assert decode_report(encode_report(rep), site=rep.site) == rep


def test_report_checks():
    data = encode_report(report())
    with pytest.raises(RecordError) as e:
        decode_report(data, site="paris")
    assert e.value.reason == "wrong_site"
    for bad in (report(level=2.0), report(mode="asleep"), report(hashrate_hs=-1.0)):
        with pytest.raises(RecordError):
            encode_report(bad)


def test_an_integer_too_large_for_a_float_is_refused_not_a_crash():
    """A report (or desired state) carrying 1e400 spelled as an integer: JSON gives a
    Python int that float() cannot hold; the record is malformed, never an OverflowError
    out of the fleet's report reading."""
    huge = "1" + "0" * 400
    data = encode_report(report()).replace(b'"hashrate_hs":120000000000000.0,"level":0.5,"mode"',
                                           b'"hashrate_hs":' + huge.encode() + b',"level":0.5,"mode"')
    assert huge.encode() in data
    with pytest.raises(RecordError) as e:
        decode_report(data, site="texas")
    assert e.value.reason == "malformed"
    obj = json.loads(encode_desired(desired(), KEY))
    obj["level"] = int(huge)
    with pytest.raises(RecordError):
        decode_desired(records.canonical_json(obj), site="texas", public_key=PUBLIC)


any_json_number = (st.floats() | st.integers() | st.integers(10 ** 308, 10 ** 400) | st.booleans() | st.none()
                   | st.text(max_size=3))


@settings(max_examples=300)
@given(st.builds(report, level=any_json_number, hashrate_hs=any_json_number, power_w=any_json_number,
                 desired_level=any_json_number,
                 devices=st.lists(st.builds(DeviceReport, st.text(max_size=3), st.booleans() | st.none(),
                                            st.booleans(), st.booleans(), any_json_number, any_json_number,
                                            any_json_number), max_size=3).map(tuple)))
def test_encode_report_refuses_exactly_what_decode_report_would(rep):
    """encode_report checks the report without parsing its bytes again: it accepts and
    refuses exactly as decode_report does on those bytes."""
    try:
        data = records.canonical_json(rep.body())
    except ValueError:                 # NaN or infinity: not even writable as JSON
        with pytest.raises(ValueError):
            encode_report(rep)
        return
    try:
        decode_report(data, site=rep.site)
    except RecordError:
        with pytest.raises(RecordError):
            encode_report(rep)
    else:
        assert encode_report(rep) == data


@settings(max_examples=300)
@given(st.sampled_from(sorted(records.DEVICE_FIELDS)),
       any_json_number | st.just("rig-1") | st.just(-1e-300) | st.just(1.0000001) | st.just(""))
def test_a_device_entry_is_either_refused_or_holds_only_valid_values(field, value):
    """Each device of a report is checked (the plain, common entries on a shorter path):
    whatever is not refused holds only values a report may carry."""
    entry = dict(DeviceReport("rig-1", True, False, True, 1.0e14, 3250.0, 0.5).body(), **{field: value})
    if any(isinstance(v, float) and not math.isfinite(v) for v in entry.values()):
        return                     # not writable as JSON at all
    data = records.canonical_json(dict(json.loads(encode_report(report(devices=()))), devices=[entry]))
    try:
        [device] = decode_report(data).devices
    except RecordError:
        return
    assert isinstance(device.name, str) and 0 < len(device.name) <= 256
    assert all(isinstance(v, bool) for v in (device.up, device.hashing, device.applied))
    for v in (device.hashrate_hs, device.power_w):
        assert v is None or (type(v) is float and 0 <= v < math.inf)
    assert (device.power_w is None) == (entry["power_w"] is None)
    assert device.level is None or (type(device.level) is float and 0 <= device.level <= 1)
