"""NewlineFramer: lines out whatever the chunking, oversized lines dropped, memory bounded."""

from hypothesis import given, settings, strategies as st

from miner.stratum.framing import NewlineFramer, Oversized

CAP = 64

line_bytes = st.binary(min_size=1, max_size=CAP).map(lambda b: b.replace(b"\n", b"x").replace(b"\r", b"y"))
big_lines = st.binary(min_size=CAP + 2, max_size=4 * CAP).map(lambda b: b.replace(b"\n", b"x"))


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:])]


def run(framer: NewlineFramer, chunks: list[bytes]) -> list:
    out = []
    for chunk in chunks:
        out += framer.feed(chunk)
        assert framer.buffered <= framer.max_line_bytes + 1
    return out


def test_basic_lines_crlf_and_blank():
    f = NewlineFramer(CAP)
    assert f.feed(b'{"a":1}\r\n\n  \n{"b"') == [b'{"a":1}']
    assert f.feed(b":2}\n") == [b'{"b":2}']
    assert f.oversized == 0


def test_oversized_reported_once_and_resyncs():
    f = NewlineFramer(8)
    out = f.feed(b"0123456789")
    assert out == [Oversized(10)] and f.oversized == 1 and f.buffered == 0
    assert f.feed(b"more junk without end") == []
    assert f.feed(b"tail\nok\n") == [b"ok"]
    assert f.oversized == 1


def test_line_of_exactly_cap_with_crlf_passes():
    f = NewlineFramer(8)
    assert f.feed(b"12345678\r\n") == [b"12345678"]
    assert f.feed(b"123456789\n") == [Oversized(9)]


@settings(max_examples=200)
@given(st.lists(line_bytes, max_size=20), st.lists(st.integers(0, 10_000), max_size=30),
       st.booleans())
def test_any_chunking_gives_same_lines(lines, cuts, crlf):
    sep = b"\r\n" if crlf else b"\n"
    data = b"".join(line + sep for line in lines)
    out = run(NewlineFramer(CAP), chunked(data, cuts))
    assert out == [line for line in lines if line.strip()]


@settings(max_examples=200)
@given(st.lists(st.one_of(line_bytes.map(lambda b: ("ok", b)), big_lines.map(lambda b: ("big", b))),
                max_size=15),
       st.lists(st.integers(0, 10_000), max_size=30))
def test_oversized_never_leak_nor_break_following(items, cuts):
    data = b"".join(b + b"\n" for _, b in items)
    framer = NewlineFramer(CAP)
    out = run(framer, chunked(data, cuts))
    expected = []
    for kind, b in items:
        if kind == "big":
            expected.append("big")
        elif b.strip():
            expected.append(b)
    got = ["big" if isinstance(x, Oversized) else x for x in out]
    assert got == expected
    assert framer.oversized == sum(1 for kind, _ in items if kind == "big")


@given(st.binary(max_size=2000), st.lists(st.integers(0, 10_000), max_size=20))
def test_garbage_is_bounded(data, cuts):
    framer = NewlineFramer(CAP)
    for item in run(framer, chunked(data, cuts)):
        assert isinstance(item, Oversized) or (0 < len(item) <= CAP and b"\n" not in item)
