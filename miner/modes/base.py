"""What every run mode shares: the stop on SIGINT/SIGTERM (within 5 s), the metrics
endpoint, the [sched] scheduler next to mining, the kernel warm-up, status lines and the
bounded wind-down of in-flight submissions.

    [sched] sites (any mode): Scheduler ─► the WorkerPool (a device of sched.local_site),
                              agents and ASICs of every site, by live power price
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import TextIO

from prometheus_client import start_http_server

from miner.config import Config, ConfigError, parse_listen
from miner.metrics import Metrics
from miner.stratum.server import Authorizer, ServerLimits

log = logging.getLogger(__name__)

# Tasks of a run that end when their work is done (the others run until the stop).
ONE_SHOT_TASKS = frozenset({"kernel"})
# A wait longer than this (seconds) is announced (a kernel compile, the node's first
# install), then its elapsed time every PROGRESS_INTERVAL seconds.
QUIET_WAIT = 2.0
PROGRESS_INTERVAL = 10.0
# At shutdown, how long in-flight block submissions may still take (seconds); what is
# unanswered by then stays in the journal for the next start.
SHUTDOWN_SUBMIT_WAIT = 2.0
# From SIGINT/SIGTERM to giving up on an orderly wind-down and cancelling the run (seconds):
# every mode stops within 5 s.
STOP_DEADLINE = 4.0


def stratum_policy(config: Config) -> dict:
    """The stratum server's authorization and abuse limits, from the [stratum] config."""
    st = config.stratum
    return {
        "authorizer": Authorizer(sites={site: password or None for site, password in st.sites.items()},
                                 allow_any=st.allow_unknown_sites),
        "limits": ServerLimits(max_line_bytes=st.max_line_bytes, messages_per_second=st.messages_per_second,
                               message_burst=st.message_burst, max_invalid_shares=st.max_invalid_shares,
                               idle_timeout=st.idle_timeout, unauthorized_timeout=st.unauthorized_timeout,
                               max_connections_per_ip=st.max_connections_per_ip, max_connections=st.max_connections,
                               max_worker_labels=st.max_worker_labels),
    }


def format_rate(hashes_per_second: float) -> str:
    """9.87 MH/s, 12.3 kH/s, 42 H/s: regtest needs a few nonces a block, mainnet billions."""
    for unit, scale in (("TH/s", 1e12), ("GH/s", 1e9), ("MH/s", 1e6), ("kH/s", 1e3)):
        if hashes_per_second >= scale:
            return f"{hashes_per_second / scale:7.2f} {unit}"
    return f"{hashes_per_second:7.0f} H/s"


@dataclass
class RunStats:
    found: int = 0
    accepted: int = 0
    rejected: int = 0
    stale: int = 0
    inconclusive: int = 0  # valid blocks the node keeps off its best chain (another block won the tip)
    held: int = 0  # blocks found while one on the same tip was with the node (kept as backups, see work/race.py)
    difficulty_accepted: float = 0.0


class Run:
    """What every run mode shares: stop on SIGINT/SIGTERM, the metrics endpoint, status lines."""

    def __init__(self, config: Config, *, metrics: Metrics | None = None, out: TextIO = sys.stdout) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        self.out = out
        self.stats = RunStats()
        self._stop = asyncio.Event()
        self.metrics_port: int | None = None  # the bound Prometheus port, once serving
        self.pool = None  # the CPU worker pool, while running
        self._submissions: set[asyncio.Task] = set()
        self.fleet = None  # the [sched] sites file, loaded, when scheduling
        self.local_site: str | None = None  # the site the local CPU workers belong to
        self.scheduler = None  # miner.sched.scheduler.Scheduler, while running
        self._serving = False  # True once _until_stopped watches for the stop itself

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        self._load_sites()  # a bad sites file fails before anything starts
        exporter = self._start_metrics()
        try:
            return await self._run_until_stopped()
        finally:
            if exporter is not None:
                exporter.shutdown()
                exporter.server_close()

    async def _run(self) -> int:
        raise NotImplementedError

    async def _run_until_stopped(self) -> int:
        """_run(), cancelled when a stop finds it still starting (an RPC retried while the
        node is down, say) or still winding down after STOP_DEADLINE."""
        main = asyncio.create_task(self._run(), name=type(self).__name__)
        stopper = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait([main, stopper], return_when=asyncio.FIRST_COMPLETED)
            if not main.done():
                if not self._serving:
                    main.cancel()  # nothing of ours is waiting for the stop yet
                await asyncio.wait([main], timeout=STOP_DEADLINE)
                if not main.done():
                    log.warning("wind-down took over %.0f s: cancelling it", STOP_DEADLINE)
                    main.cancel()
            try:
                return await main
            except asyncio.CancelledError:
                if not self._stop.is_set():
                    raise  # cancelled from outside, not by our stop
                self._print("stopped")
                return 0
        finally:
            stopper.cancel()
            if not main.done():  # we were cancelled: the run goes too
                main.cancel()
                await asyncio.gather(main, return_exceptions=True)

    def _start_metrics(self):
        """The Prometheus endpoint; a port in use is logged, and mining goes on without it."""
        if self.config.metrics.listen == "off":
            return None
        host, port = parse_listen(self.config.metrics.listen, "metrics.listen")
        try:
            server, _ = start_http_server(port, addr=host, registry=self.metrics.registry)
        except OSError as e:
            log.error("metrics endpoint %s unavailable (%s); mining continues without it",
                      self.config.metrics.listen, e)
            return None
        self.metrics_port = server.server_port
        self._print(f"metrics at http://{host}:{server.server_port}/metrics")
        return server

    @property
    def pool_site(self) -> str:
        """The site label of the local workers' hashes (gridminer_hashes_total{site})."""
        return self.local_site or "local"

    def _load_sites(self) -> None:
        sc = self.config.sched
        if sc.sites is None:
            return
        from miner.sched.scheduler import fleet_setting_problems, local_site_of
        from miner.sched.sites import SitesError, load_sites

        try:
            self.fleet = load_sites(sc.sites)
            self.local_site = local_site_of(self.fleet, sc.local_site)
        except (SitesError, ValueError) as e:
            raise ConfigError(f"sched.sites: {e}") from None
        # Every feed and device setting and environment variable, all at once, before a node starts
        problems = fleet_setting_problems(self.fleet, local_site=self.local_site)
        if problems:
            raise ConfigError(f"sched.sites {sc.sites}: {len(problems)} setting(s) missing or wrong; nothing "
                              "was started:\n  - " + "\n  - ".join(problems))

    def _prepare_scheduler(self, *, rpc=None, coinbase_sats=None) -> None:
        """Build the scheduler (with [sched] sites) once the local pool exists, before anything
        runs: a bad feed or device table is a ConfigError; the local pool is a device of the
        local site."""
        if self.fleet is None:
            return
        from miner.sched.scheduler import build_scheduler

        sc = self.config.sched
        try:
            self.scheduler = build_scheduler(self.fleet, metrics=self.metrics, interval_seconds=sc.interval_seconds,
                                             policy_name=sc.policy, local_pool=self.pool, local_site=self.local_site,
                                             rpc=rpc, coinbase_sats=coinbase_sats)
        except ValueError as e:
            raise ConfigError(f"sched: {e}") from None
        devices = sum(len(d) for d in self.scheduler.devices.values())
        self._print(f"scheduler: {len(self.fleet.sites)} site(s), {devices} device(s), every "
                    f"{sc.interval_seconds:g} s; local workers at site {self.local_site or '-'}")

    def _scheduler_tasks(self) -> list[asyncio.Task]:
        """The scheduler's loop next to mining, if there is one."""
        return [asyncio.create_task(self.scheduler.run(), name="scheduler")] if self.scheduler else []

    async def _until_stopped(self, tasks: list[asyncio.Task]) -> None:
        """Wait for stop() or for a task to fail (its exception is raised) or end; a task
        named in ONE_SHOT_TASKS may end, and the run goes on."""
        self._serving = True
        stopper = asyncio.create_task(self._stop.wait())
        waiting = {stopper, *tasks}
        try:
            while True:
                done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    if t is not stopper and t.exception() is not None:
                        raise t.exception()
                if any(t is stopper or t.get_name() not in ONE_SHOT_TASKS for t in done):
                    return
        finally:
            stopper.cancel()

    async def _start_pool_when_warm(self) -> None:
        """Start the local workers once the kernel is compiled (or loaded from numba's cache).

        Everything else (the stratum server, the work source) is already serving: a cold
        compile can take a minute, and rigs must not wait for it. warm_up says what it
        compiles and how long it takes.
        """
        pool = self.pool
        if pool is not None and pool.threads:
            from kernels.scan import warm_up

            await self._wait_visibly(lambda: warm_up(progress=self._print), None)
        if pool is not None:
            pool.start()

    async def _wait_visibly(self, fn, what: str | None) -> None:
        """Run fn() on a daemon thread, so that a stop never waits for it; when it takes over
        QUIET_WAIT seconds, say `what` we wait for (None: fn says it itself), then every
        PROGRESS_INTERVAL how long so far. Raises what fn raised."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def settle(error: BaseException | None) -> None:
            if not ready.done():
                ready.set_exception(error) if error is not None else ready.set_result(None)

        def work() -> None:
            error = None
            try:
                fn()
            except BaseException as e:  # raised again on the loop, in the waiting task
                error = e
            with contextlib.suppress(RuntimeError):  # the loop is gone: the run stopped meanwhile
                loop.call_soon_threadsafe(settle, error)

        t0 = time.monotonic()
        threading.Thread(target=work, name="gridminer-wait", daemon=True).start()
        done, _ = await asyncio.wait([ready], timeout=QUIET_WAIT)
        if not done and what is not None:
            self._print(what)
            while not done:
                done, _ = await asyncio.wait([ready], timeout=PROGRESS_INTERVAL)
                if not done:
                    self._print(f"... {time.monotonic() - t0:.0f} s")
        await ready

    async def _listen(self, server) -> None:
        """Start our stratum server on stratum.listen; a port it cannot take is a ConfigError."""
        try:
            await server.start()
        except OSError as e:
            raise ConfigError(f"stratum.listen: cannot listen on {self.config.stratum.listen}: {e}") from None
        self.stratum_port = server.port

    def _print(self, text: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {text}", file=self.out, flush=True)

    def _track(self, coro) -> None:
        """Run a submission in the background; shutdown waits for it (see _wind_down)."""
        task = asyncio.ensure_future(coro)
        self._submissions.add(task)
        task.add_done_callback(self._submission_done)

    def _submission_done(self, task: asyncio.Task) -> None:
        self._submissions.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("submission failed", exc_info=task.exception())

    def _submissions_wait_for_peer(self) -> bool:
        """True when the submissions in flight only wait for an unreachable peer (no use waiting)."""
        return False

    async def _wind_down(self, tasks: list[asyncio.Task]) -> None:
        """Stop the CPU workers, then let every submission finish (bounded) before cancelling."""
        if self.pool is not None:
            await asyncio.to_thread(self.pool.stop)
        # Solutions found just before the threads stopped reach the loop through
        # call_soon_threadsafe: let those callbacks run, then give the submissions a chance
        # to finish while the node or pool is still there. A found block stays journaled.
        await asyncio.sleep(0)
        deadline = time.monotonic() + SHUTDOWN_SUBMIT_WAIT
        while self._submissions and time.monotonic() < deadline and not self._submissions_wait_for_peer():
            await asyncio.wait(set(self._submissions), timeout=min(0.1, deadline - time.monotonic()))
        for t in [*tasks, *self._submissions]:
            t.cancel()
        await asyncio.gather(*tasks, *self._submissions, return_exceptions=True)
