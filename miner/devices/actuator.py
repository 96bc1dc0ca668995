"""Driving a site's devices to a level: commands with bounded retries, a read-back, and
what the site really does afterwards.

    DeviceActuator.apply(site, level) ─► per device: apply (retried, doubling delays) unless
                                         already in force, then read() ─► DeviceOutcome
    site_measurement(level, before, outcomes) ─► SiteMeasurement (level in force, hashing,
                                         hash rate, power): the truth, not the request

Used by the local scheduler (LocalActuator: devices in this process) and by a site agent
that takes its level from the bus. Clocks and sleeps are injected for tests.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterator, Mapping, Sequence

from miner.devices.model import Device, DeviceError, DeviceReading

log = logging.getLogger(__name__)

# A failing device is logged at most this often (seconds); "answers again" when it heals.
ERROR_LOG_INTERVAL = 60.0


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries of one device command: `tries` attempts, delays doubling to a cap."""

    tries: int = 3
    first_delay_seconds: float = 0.5
    factor: float = 2.0
    max_delay_seconds: float = 5.0
    timeout_seconds: float = 10.0      # per command (apply or read)

    def __post_init__(self) -> None:
        if self.tries < 1:
            raise ValueError(f"tries must be >= 1, got {self.tries}")

    def delays(self) -> Iterator[float]:
        """The waits between attempts (tries - 1 of them)."""
        delay = self.first_delay_seconds
        for _ in range(self.tries - 1):
            yield min(delay, self.max_delay_seconds)
            delay *= self.factor


class LimitedLog:
    """Warnings at most once per `interval` seconds per key; `healed(key)` is True once
    after a key warned, so the caller can log the recovery exactly once."""

    def __init__(self, logger: logging.Logger, interval: float = ERROR_LOG_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger, self.interval, self.clock = logger, interval, clock
        self._last: dict[str, float] = {}

    def warning(self, key: str, message: str, *args: Any) -> None:
        now = self.clock()
        if now - self._last.get(key, -math.inf) >= self.interval:
            self._last[key] = now
            self.logger.warning(message, *args)

    def healed(self, key: str) -> bool:
        return self._last.pop(key, None) is not None

    @property
    def warned(self) -> bool:
        """Some key warned and has not healed (callers skip building keys when not)."""
        return bool(self._last)


def error_text(error: BaseException) -> str:
    """An exception for the log: its message, or its class name when it has none (timeouts)."""
    return str(error) or type(error).__name__


class _Deadline:
    """One command under a CommandDeadlines timeout (asyncio.timeout's states, by hand)."""

    __slots__ = ("task", "when", "cancelling", "expired", "done")

    def __init__(self, task: asyncio.Task, when: float) -> None:
        self.task, self.when = task, when
        self.cancelling = task.cancelling()
        self.expired = False
        self.done = False


class CommandDeadlines:
    """Per-command timeouts that share one timer: `async with deadlines.timeout(seconds):`
    behaves as `async with asyncio.timeout(seconds):` (the command's task is cancelled at
    its deadline and the cancellation leaves as TimeoutError; any other cancellation,
    a stop, stays a CancelledError).

    asyncio.timeout puts a timer per command in the loop's heap and cancels it a few
    milliseconds later; a site driving thousands of device commands at once (every device
    apply, then read) pays for that heap on every command. Here the deadlines of one
    timeout length only grow (loop time is monotonic), so they wait in a FIFO and a single
    timer, armed for the oldest pending one, expires them in order. A command given a
    deadline earlier than one already queued (another length) uses asyncio.timeout."""

    def __init__(self) -> None:
        self._queue: collections.deque[_Deadline] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def timeout(self, seconds: float) -> Any:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # Commands left by a loop that ended without finishing them: not this loop's.
            self._queue.clear()
            self._timer, self._loop = None, loop
        when = loop.time() + seconds
        if self._queue and when < self._queue[-1].when:
            return asyncio.timeout(seconds)
        return _DeadlineScope(self, loop, when)

    def _enter(self, loop: asyncio.AbstractEventLoop, when: float) -> _Deadline:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("CommandDeadlines.timeout() should be used inside a task")
        entry = _Deadline(task, when)
        self._queue.append(entry)
        if self._timer is None:
            self._arm(loop, when)
        return entry

    def _exit(self, entry: _Deadline) -> None:
        entry.done = True
        queue = self._queue
        while queue and queue[0].done:
            queue.popleft()
        if not queue and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        self._timer = loop.call_at(when, self._expire, loop, when)

    def _expire(self, loop: asyncio.AbstractEventLoop, fired_for: float) -> None:
        """The timer fired: cancel every pending command whose deadline has come, then
        wait for the next one."""
        self._timer = None
        now = max(loop.time(), fired_for)
        queue = self._queue
        while queue and (queue[0].done or queue[0].when <= now):
            entry = queue.popleft()
            if not entry.done:
                entry.expired = True
                entry.task.cancel()
        if queue:
            self._arm(loop, queue[0].when)


class _DeadlineScope:
    __slots__ = ("_owner", "_loop", "_when", "_entry")

    def __init__(self, owner: CommandDeadlines, loop: asyncio.AbstractEventLoop, when: float) -> None:
        self._owner, self._loop, self._when = owner, loop, when
        self._entry: _Deadline | None = None

    async def __aenter__(self) -> None:
        self._entry = self._owner._enter(self._loop, self._when)

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        entry = self._entry
        self._owner._exit(entry)
        if entry.expired:
            # As asyncio.timeout: our cancel becomes TimeoutError unless someone else
            # cancelled the task too (then their CancelledError goes on).
            if entry.task.uncancel() <= entry.cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc
        return None


@dataclass(frozen=True)
class DeviceOutcome:
    device: str
    applied: bool                      # the level was set this step (or already in force)
    reading: DeviceReading | None      # None: the device did not answer read()
    hashing: bool                      # counted as hashing (a device that did not wake is not)


@dataclass(frozen=True)
class SiteMeasurement:
    """What a site does after it was told a level."""

    level: float                       # the level really in force (0.0: not hashing)
    hashing: bool
    hashrate_hs: float                 # what the hashing devices report
    power_w: float | None              # every device's watts summed; None when any cannot tell
    devices: tuple[DeviceOutcome, ...] = ()
    modelled: bool = False             # no device to measure: the site does what it was told


def usable_watts(value: float | None) -> float | None:
    """A device's reported watts, or None (unreported) when firmware sends nonsense."""
    if value is None or not math.isfinite(value) or value < 0:
        return None
    return value


def site_measurement(decision_level: float, before_level: float,
                     outcomes: Sequence[DeviceOutcome]) -> SiteMeasurement:
    """The site's state after asking for `decision_level` while it ran at `before_level`.
    Hashing at all means the level asked for when it was > 0; a curtail that did not take
    leaves the site at its level before (1.0 when that was unknown). A site without
    devices is modelled: it does what it was told."""
    if not outcomes:
        return SiteMeasurement(decision_level, decision_level > 0, 0.0, None, modelled=True)
    hashing = any(o.hashing for o in outcomes)
    if decision_level > 0:
        level = decision_level if hashing else 0.0
    else:
        level = (before_level or 1.0) if hashing else 0.0
    hashrate_hs = sum(o.reading.hashrate_hs for o in outcomes if o.hashing and o.reading is not None)
    powers = [usable_watts(o.reading.power_w) for o in outcomes if o.reading is not None]
    power_w = sum(p for p in powers if p is not None) \
        if len(powers) == len(outcomes) and None not in powers else None
    return SiteMeasurement(level, hashing, hashrate_hs, power_w, tuple(outcomes))


class DeviceActuator:
    """Commands to devices, with retry and read-back, per (site, device)."""

    def __init__(self, devices: Mapping[str, Sequence[Device]], *, metrics: Any,
                 retry: RetryPolicy = RetryPolicy(),
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.devices = {k: list(v) for k, v in devices.items()}
        self.metrics, self.retry, self._sleep = metrics, retry, sleep
        self._in_force: dict[tuple[str, str], float] = {}   # (site, device) -> level in force
        self._log = LimitedLog(log)
        self._deadlines = CommandDeadlines()
        # (site, device) -> its gridminer_device_up child and its actuations{result="ok"}
        # child: found once, not with labels() on every command.
        self._up: dict[tuple[str, str], Any] = {}
        self._ok: dict[tuple[str, str], Any] = {}

    def _up_gauge(self, key: tuple[str, str]) -> Any:
        child = self._up.get(key)
        if child is None:
            child = self._up[key] = self.metrics.device_up.labels(*key)
        return child

    def _ok_counter(self, key: tuple[str, str]) -> Any:
        child = self._ok.get(key)
        if child is None:
            child = self._ok[key] = self.metrics.actuations.labels(*key, "ok")
        return child

    async def apply(self, site: str, level: float) -> list[DeviceOutcome]:
        return list(await asyncio.gather(*(self.actuate_device(site, dev, level)
                                           for dev in self.devices.get(site, []))))

    async def readings(self, site: str) -> list[DeviceReading | None]:
        return list(await asyncio.gather(*(self.read(site, dev) for dev in self.devices.get(site, []))))

    async def actuate_device(self, site: str, device: Device, level: float) -> DeviceOutcome:
        key = (site, device.name)
        applied = True
        if self._in_force.get(key) != level:
            applied = await self.apply_with_retry(site, device, level, key)
            if applied:
                self._in_force[key] = level
            else:
                self._in_force.pop(key, None)
        reading = await self.read(site, device)
        self._up_gauge(key).set(1 if reading is not None else 0)
        # A device that did not take a level > 0 did not wake: never count it as hashing.
        hashing = reading is not None and reading.hashing and (applied or level <= 0)
        if reading is not None and reading.hashing != (level > 0):
            self._in_force.pop(key, None)  # it does not do what it was told: tell it again next time
        return DeviceOutcome(device.name, applied, reading, hashing)

    async def apply_with_retry(self, site: str, device: Device, level: float,
                               key: tuple[str, str] | None = None) -> bool:
        key = key or (site, device.name)
        delays: Iterator[float] | None = None     # made on the first failure
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self._deadlines.timeout(self.retry.timeout_seconds):
                    await device.apply(level)
                self._ok_counter(key).inc()
                if self._log.warned and self._log.healed(f"device:{site}:{device.name}"):
                    log.info("site %s: device %s answers again", site, device.name)
                return True
            except asyncio.CancelledError:
                raise
            except Exception as e:
                error = e
                if not isinstance(e, (DeviceError, asyncio.TimeoutError, OSError)):
                    log.exception("site %s: device %s failed unexpectedly", site, device.name)
            if delays is None:
                delays = self.retry.delays()
            delay = next(delays, None)
            if delay is None:
                break
            self.metrics.actuations.labels(site, device.name, "retried").inc()
            log.debug("site %s: device %s: level %.2f failed (%s); try %d in %.2g s",
                      site, device.name, level, error, attempt + 1, delay)
            await self._sleep(delay)
        self.metrics.actuations.labels(site, device.name, "failed").inc()
        what = "did not curtail" if level <= 0 else f"did not take level {level:.2f}"
        self._log.warning(f"device:{site}:{device.name}", "site %s: device %s %s after %d tries: %s",
                          site, device.name, what, attempt, error_text(error))
        return False

    async def read(self, site: str, device: Device) -> DeviceReading | None:
        try:
            async with self._deadlines.timeout(self.retry.timeout_seconds):
                reading = await device.read()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if not isinstance(e, (DeviceError, asyncio.TimeoutError, OSError)):
                log.exception("site %s: device %s read failed unexpectedly", site, device.name)
            self.metrics.actuations.labels(site, device.name, "read_failed").inc()
            self._log.warning(f"read:{site}:{device.name}", "site %s: device %s does not answer: %s",
                              site, device.name, error_text(e))
            return None
        if self._log.warned and self._log.healed(f"read:{site}:{device.name}"):
            log.info("site %s: device %s answers again", site, device.name)
        return reading


class LocalActuator:
    """The scheduler's actuator for devices driven from this process: apply the decision's
    level to the site's devices and measure what they really do."""

    def __init__(self, devices: Mapping[str, Sequence[Device]], *, metrics: Any,
                 retry: RetryPolicy = RetryPolicy(),
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.driver = DeviceActuator(devices, metrics=metrics, retry=retry, sleep=sleep)
        self.devices = self.driver.devices

    async def actuate(self, site: str, decision: Any, before_level: float = 0.0) -> SiteMeasurement:
        outcomes = await self.driver.apply(site, decision.level)
        return site_measurement(decision.level, before_level, outcomes)

    async def take_over(self) -> dict[str, SiteMeasurement]:
        """What each site with devices does before the first decision: hashing at the
        highest level a hashing device reports (1.0 when it cannot tell)."""
        names = [name for name, devs in self.devices.items() if devs]

        async def site_now(name: str) -> SiteMeasurement:
            readings = await self.driver.readings(name)
            hashing = [r for r in readings if r is not None and r.hashing]
            level = max((r.level if r.level is not None else 1.0 for r in hashing), default=0.0)
            return SiteMeasurement(level, bool(hashing), sum(r.hashrate_hs for r in hashing), None)

        return dict(zip(names, await asyncio.gather(*(site_now(n) for n in names))))
