"""The servers (HTTP and the cgminer API) and the host that runs many miners in one loop."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import random
import socket
from typing import Any

from miner.testing.asic_emulators.base import HTTP_PORT, EmulatedMiner, Request, cgminer_status

MAX_REQUEST_BYTES = 64 * 1024     # every request asic-rs sends is well under 2 kB
REQUEST_TIMEOUT_S = 10.0          # a client that sends nothing for this long is dropped


def can_bind_low_ports() -> bool:
    """True when this process may listen on port 80 of a loopback address."""
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", 0))
        s.close()
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.254.254.254", HTTP_PORT))
        return True
    except PermissionError:
        return False
    except OSError as e:
        return e.errno == errno.EADDRINUSE  # someone else holds it: we may bind low ports
    finally:
        s.close()


def raise_open_file_limit() -> int:
    """Lift the soft open-file limit to the hard one (two sockets per miner add up); returns it."""
    try:
        import resource
    except ImportError:   # not on this platform
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 413: "Payload Too Large",
            500: "Internal Server Error"}


async def _until_closed(reader: asyncio.StreamReader) -> None:
    """A hung miner: hold the connection until the client closes it (or the host stops)."""
    while await reader.read(4096):
        pass


async def _serve_http(miner: EmulatedMiner, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = (lines[0].split(" ", 2) + ["", ""])[:3]
        headers = {}
        for line in lines[1:]:
            k, sep, v = line.partition(":")
            if sep:
                headers[k.strip().lower()] = v.strip()
        length = int(headers.get("content-length", "0") or 0)
        extra = ""
        if length > MAX_REQUEST_BYTES:
            status, ctype, body = 413, "text/plain", b"too large"
        else:
            data = await asyncio.wait_for(reader.readexactly(length), REQUEST_TIMEOUT_S) if length else b""
            path = target.split("?", 1)[0]
            param: Any = data.decode("utf-8", "replace") if data else None
            miner.record(Request("http", f"{method} {path}", param))
            if miner.hang:
                await _until_closed(reader)
                return
            status, ctype, body, *more = miner.http(method, path, headers, data)
            extra = "".join(f"{k}: {v}\r\n" for k, v in (more[0] if more else {}).items())
        writer.write(f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\nContent-Type: {ctype}\r\n"
                     f"{extra}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError,
            ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def _serve_rpc(miner: EmulatedMiner, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """cgminer's API: one JSON request (asic-rs may or may not end it with a newline), one reply."""
    buf = b""
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REQUEST_TIMEOUT_S
        req: Any = None
        while req is None:
            chunk = await asyncio.wait_for(reader.read(4096), max(0.0, deadline - loop.time()))
            buf += chunk
            try:
                req = json.loads(buf.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                if not chunk or len(buf) > MAX_REQUEST_BYTES:
                    break
        if isinstance(req, dict) and isinstance(req.get("command"), str):
            command, param = req["command"], req.get("parameter")
            miner.record(Request("rpc", command, param))
            if miner.hang:
                await _until_closed(reader)
                return
            reply = miner.rpc(command, param)
        else:
            miner.record(Request("rpc", "<malformed>", buf[:80]))
            reply = cgminer_status("E", 23, "Invalid JSON")
        writer.write(json.dumps(reply).encode() + b"\x00")
        await writer.drain()
    except (asyncio.TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()


async def _serve_length_prefixed(miner: EmulatedMiner, reader: asyncio.StreamReader,
                                 writer: asyncio.StreamWriter) -> None:
    """Whatsminer's API v3 (port 4433): 4-byte little-endian length, then JSON, both ways."""
    try:
        size = int.from_bytes(await asyncio.wait_for(reader.readexactly(4), REQUEST_TIMEOUT_S), "little")
        if size > MAX_REQUEST_BYTES:
            miner.record(Request("wm3", "<oversized>", size))
            reply: dict[str, Any] = {"code": -1, "msg": "request too large"}
        else:
            body = await asyncio.wait_for(reader.readexactly(size), REQUEST_TIMEOUT_S)
            try:
                req = json.loads(body.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                req = None
            if isinstance(req, dict) and isinstance(req.get("cmd"), str):
                miner.record(Request("wm3", req["cmd"], req.get("param")))
                if miner.hang:
                    await _until_closed(reader)
                    return
                reply = miner.length_prefixed(req)
            else:
                miner.record(Request("wm3", "<malformed>", body[:80]))
                reply = {"code": -1, "msg": "invalid JSON"}
        out = json.dumps(reply).encode()
        writer.write(len(out).to_bytes(4, "little") + out)
        await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()


_SERVERS = {"http": _serve_http, "rpc": _serve_rpc, "length-prefixed": _serve_length_prefixed}


class EmulatorHost:
    """Many emulated miners in one asyncio loop, each on its own loopback address.

    ``async with EmulatorHost() as host: ip = await host.add(LuxOSMiner())``. Addresses
    come from a /16 of 127.0.0.0/8 picked at random (so parallel runs rarely meet), and
    an address found busy is skipped.
    """

    def __init__(self, *, network: tuple[int, int] | None = None) -> None:
        self._net = network or (127, random.randrange(64, 250))
        self._next = random.randrange(1, 200) * 256 + 1
        self.miners: dict[str, EmulatedMiner] = {}
        self._servers: dict[str, list[asyncio.AbstractServer]] = {}
        self._conns: dict[str, set[asyncio.StreamWriter]] = {}

    async def __aenter__(self) -> EmulatorHost:
        raise_open_file_limit()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def _allocate(self) -> str:
        while True:
            n = self._next
            self._next += 1
            if n % 256 in (0, 255):
                continue
            if n >= 65535:
                raise RuntimeError("emulator host: loopback addresses exhausted")
            return f"{self._net[0]}.{self._net[1]}.{n // 256}.{n % 256}"

    async def add(self, miner: EmulatedMiner, ip: str | None = None) -> str:
        """Start serving `miner`; returns the loopback address asic-rs should dial."""
        for _ in range(64 if ip is None else 1):
            addr = ip or self._allocate()
            try:
                servers = await self._listen(miner, addr)
            except OSError as e:
                if e.errno == errno.EADDRINUSE and ip is None:
                    continue
                raise
            self.miners[addr] = miner
            self._servers[addr] = servers
            return addr
        raise RuntimeError("emulator host: no free loopback address found")

    async def _listen(self, miner: EmulatedMiner, addr: str) -> list[asyncio.AbstractServer]:
        servers: list[asyncio.AbstractServer] = []
        conns = self._conns.setdefault(addr, set())

        def tracked(serve: Any) -> Any:
            async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                conns.add(writer)
                try:
                    await serve(miner, reader, writer)
                finally:
                    conns.discard(writer)
            return handle

        try:
            for port, protocol in miner.ports.items():
                serve = _SERVERS[protocol]
                servers.append(await asyncio.start_server(tracked(serve), addr, port, reuse_address=True))
        except OSError:
            for s in servers:
                s.close()
            self._conns.pop(addr, None)
            raise
        return servers

    async def remove(self, ip: str) -> None:
        """Stop serving the miner at `ip` (it becomes unreachable)."""
        for w in self._conns.pop(ip, set()):
            w.close()
        for s in self._servers.pop(ip, []):
            s.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(s.wait_closed(), 2)
        self.miners.pop(ip, None)

    async def close(self) -> None:
        for ip in list(self._servers):
            await self.remove(ip)
