"""Every Prometheus metric gridminer exports, in one place.

Components take a `Metrics` (default: one with a private registry, so tests and
libraries never collide on the global one). The registry also carries the standard
`process_*` (start time, CPU, memory, open fds) and `python_info` series. Labels are bounded sets: a site, a worker
group, a reason or a method name; never a client address or a job id.
"""

from __future__ import annotations

import importlib.metadata
import platform

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, Info, PlatformCollector,
                               ProcessCollector, disable_created_metrics)

# Every counter and histogram would also export a `*_created` series (the Unix time it
# was made): 86 series nobody graphs. Process-wide, as prometheus_client offers it.
disable_created_metrics()


# Label values known in advance (pre-initialised below).
# inconclusive: valid but not on the node's best chain (BIP22), never counted as rejected.
BLOCK_STAGES = ("found", "submitted", "accepted", "inconclusive", "rejected", "stale")
UPSTREAM_SHARE_RESULTS = ("accepted", "rejected", "unknown", "stale", "invalid")
FLEET_BUS_ERRORS = ("write", "read", "lease", "buckets", "report_malformed")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry

        # Node RPC and notifications
        self.rpc_calls = Counter("gridminer_rpc_calls_total", "JSON-RPC calls to the node, by method",
                                 ["method"], registry=r)
        self.rpc_errors = Counter("gridminer_rpc_errors_total",
                                  "JSON-RPC failures, by kind (unavailable, warming_up, auth, rpc_<code>)",
                                  ["kind"], registry=r)
        self.node_up = Gauge("gridminer_node_up", "1 while the node answers RPC, else 0", registry=r)
        self.node_height = Gauge("gridminer_node_height", "Height of the node's best block", registry=r)
        self.zmq_messages = Counter("gridminer_zmq_messages_total", "ZMQ notifications received, by topic",
                                    ["topic"], registry=r)
        self.zmq_malformed = Counter("gridminer_zmq_malformed_total",
                                     "ZMQ messages that could not be parsed (wrong frames, bad sequence)",
                                     registry=r)
        self.zmq_gaps = Counter("gridminer_zmq_sequence_gaps_total",
                                "ZMQ sequence-number gaps (lost notifications)", registry=r)
        self.tip_changes = Counter("gridminer_tip_changes_total", "New tips seen, by the tier that saw them first",
                                   ["via"], registry=r)

        # Jobs
        self.jobs = Counter("gridminer_jobs_total", "Jobs made, by source and whether clean (new tip)",
                            ["source", "clean"], registry=r)
        self.job_created = Gauge("gridminer_job_created_timestamp_seconds",
                                 "Unix time the current job was made", registry=r)
        self.tip_to_job = Histogram("gridminer_new_tip_to_job_seconds",
                                    "From noticing a new tip to the new job reaching the workers",
                                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=r)
        self.template_errors = Counter("gridminer_template_errors_total",
                                       "Templates refused, by reason", ["reason"], registry=r)

        # Hashing
        self.hashes = Counter("gridminer_hashes_total", "Nonces hashed by local workers (rate: PromQL rate())",
                              ["site", "worker_group"], registry=r)
        self.workers = Gauge("gridminer_workers", "Hashing threads running", ["site", "worker_group"],
                             registry=r)

        # Stratum server
        self.stratum_connections = Gauge("gridminer_stratum_connections", "Open stratum connections", registry=r)
        self.stratum_connects = Counter("gridminer_stratum_connects_total", "Stratum connections accepted",
                                        registry=r)
        self.stratum_disconnects = Counter("gridminer_stratum_disconnects_total",
                                           "Stratum connections closed, by reason", ["reason"], registry=r)
        self.stratum_shares = Counter("gridminer_stratum_shares_total",
                                      "Shares submitted, by site and result (accepted or the reject reason)",
                                      ["site", "result"], registry=r)
        self.stratum_share_work = Counter("gridminer_stratum_share_difficulty_total",
                                          "Sum of accepted shares' difficulties (x 2^32 / s = hash rate)",
                                          ["site"], registry=r)
        self.stratum_worker_share_work = Counter(
            "gridminer_stratum_worker_share_difficulty_total",
            "Sum of accepted shares' difficulties per worker name (x 2^32 / s = its hash rate); only the "
            "first stratum.max_worker_labels names get their own label, the rest count as worker=\"other\"",
            ["worker"], registry=r)
        self.stratum_bytes = Counter("gridminer_stratum_bytes_total", "Stratum bytes, by direction (in, out)",
                                     ["direction"], registry=r)
        self.stratum_limit_hits = Counter("gridminer_stratum_limit_hits_total",
                                          "Abuse limits that fired, by limit", ["limit"], registry=r)
        self.stratum_protocol_errors = Counter("gridminer_stratum_protocol_errors_total",
                                               "Malformed stratum lines and requests, by kind", ["kind"],
                                               registry=r)

        # Upstream pool (agent and proxy modes)
        self.upstream_up = Gauge("gridminer_upstream_up", "1 while connected and authorized to an upstream pool",
                                 registry=r)
        self.upstream_pool_index = Gauge("gridminer_upstream_pool_index",
                                         "Which pool of the configured list is in use (0 = first)", registry=r)
        self.upstream_failovers = Counter("gridminer_upstream_failovers_total",
                                          "Switches from one upstream pool to another", registry=r)
        self.upstream_shares = Counter("gridminer_upstream_shares_total",
                                       "Shares sent upstream, by the pool's answer (accepted, rejected, unknown, "
                                       "stale, invalid)", ["result"], registry=r)
        self.upstream_malformed = Counter("gridminer_upstream_malformed_lines_total",
                                          "Lines from a pool that could not be used", registry=r)

        # Agent control API (cgminer-compatible)
        self.agent_api_requests = Counter("gridminer_agent_api_requests_total",
                                          "Agent API commands served, by command", ["command"], registry=r)
        self.agent_api_errors = Counter("gridminer_agent_api_errors_total",
                                        "Agent API requests refused or failed, by reason", ["reason"], registry=r)
        self.agent_api_paused = Gauge("gridminer_agent_paused", "1 while the agent's hashing is paused", registry=r)

        # Blocks
        self.blocks = Counter("gridminer_blocks_total",
                              "Blocks by stage: found, submitted, accepted, inconclusive (valid, not on the best "
                              "chain), rejected, stale",
                              ["stage"], registry=r)
        self.block_rejects = Counter("gridminer_block_rejects_total", "Blocks the node rejected, by its reason",
                                     ["reason"], registry=r)
        self.journal_pending = Gauge("gridminer_journal_pending_blocks",
                                     "Found blocks in the journal with no final answer from the node", registry=r)

        # Scheduler: sites, prices, decisions, actuation (labels: configured site and device names)
        self.hashprice = Gauge("gridminer_hashprice_usd_per_th_day",
                               "Expected revenue of 1 TH/s for a day, before pool fee", registry=r)
        self.site_price = Gauge("gridminer_site_price_usd_per_mwh",
                                "All-in power price the scheduler last saw (feed price x rate + adder)",
                                ["site"], registry=r)
        self.site_breakeven = Gauge("gridminer_site_breakeven_usd_per_mwh",
                                    "Power price above which the site loses money", ["site"], registry=r)
        self.site_level = Gauge("gridminer_site_power_level",
                                "Planned power level (0 off, else fraction of capacity)", ["site"], registry=r)
        self.site_curtailed = Gauge("gridminer_site_curtailed",
                                    "1 while the plan has the site off (curtailed), else 0", ["site"], registry=r)
        self.site_hashing = Gauge("gridminer_site_hashing",
                                  "1 while the site's devices report hashing, else 0", ["site"], registry=r)
        self.site_power = Gauge("gridminer_site_power_watts", "Power the site draws (reported or modelled)",
                                ["site"], registry=r)
        self.site_hashrate = Gauge("gridminer_site_hashrate_hashes_per_second",
                                   "Hash rate the site's devices report", ["site"], registry=r)
        self.site_energy = Counter("gridminer_site_energy_joules_total", "Energy used, integrated from power",
                                   ["site"], registry=r)
        self.site_cost = Counter("gridminer_site_energy_cost_usd_total", "Cost of the energy used at the "
                                 "all-in price (negative prices lower it; see _credit_usd_total)",
                                 ["site"], registry=r)
        self.site_credit = Counter("gridminer_site_energy_credit_usd_total",
                                   "Money earned by using power at negative prices", ["site"], registry=r)
        self.site_revenue = Counter("gridminer_site_revenue_usd_total",
                                    "Estimated mining revenue (hash rate x hashprice x (1 - pool fee))",
                                    ["site"], registry=r)
        self.sched_decisions = Counter("gridminer_sched_decisions_total",
                                       "Scheduler decisions, by site and reason", ["site", "reason"], registry=r)
        self.site_starts = Counter("gridminer_site_starts_total", "Off -> on transitions", ["site"], registry=r)
        self.feed_age = Gauge("gridminer_feed_age_seconds",
                              "Seconds since the site's current price was last fetched", ["site"], registry=r)
        self.feed_errors = Counter("gridminer_feed_errors_total", "Price feed failures, by site and kind",
                                   ["site", "kind"], registry=r)
        self.feed_stale = Gauge("gridminer_feed_stale", "1 while the site has no fresh price", ["site"],
                                registry=r)
        self.failsafe = Counter("gridminer_sched_failsafe_total",
                                "Decisions made by the fail-safe for want of a price, by site", ["site"],
                                registry=r)
        self.actuations = Counter("gridminer_device_actuations_total",
                                  "Commands sent to devices, by site, device and result (ok, failed, retried, "
                                  "read_failed)", ["site", "device", "result"], registry=r)
        self.device_up = Gauge("gridminer_device_up", "1 while the device answers its control API",
                               ["site", "device"], registry=r)
        self.sched_step_seconds = Histogram(
            "gridminer_sched_step_seconds",
            "Seconds of each phase of a scheduler step: prices (feeds fetched), hashprice, decide (the "
            "policy), actuate (devices driven, or desired states written and reports read)", ["phase"],
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r)
        self.sched_errors = Counter("gridminer_sched_errors_total",
                                    "Scheduler failures that the loop survived, by kind (step, "
                                    "hashprice_unavailable, hashprice_error, hashprice_invalid)", ["kind"],
                                    registry=r)

        # Fleet scheduler (miner fleet): leadership and each site's desired vs reported state
        self.fleet_leader = Gauge("gridminer_fleet_leader", "1 while this fleet process holds the leader lease",
                                  registry=r)
        self.fleet_lease_age = Gauge("gridminer_fleet_lease_age_seconds",
                                     "Seconds since the leader lease was last renewed (this process's own "
                                     "renewal while it leads, else the holder's as last read)", registry=r)
        self.fleet_desired_level = Gauge("gridminer_fleet_desired_level", "Level in the site's desired state",
                                         ["site"], registry=r)
        self.fleet_reported_level = Gauge("gridminer_fleet_reported_level",
                                          "Level the site reports in force", ["site"], registry=r)
        self.fleet_desired_revision = Gauge("gridminer_fleet_desired_revision",
                                            "Revision (epoch << 32 | seq) of the site's desired state",
                                            ["site"], registry=r)
        self.fleet_last_ack_age = Gauge("gridminer_fleet_last_ack_age_seconds",
                                        "Seconds since the site last acknowledged a desired state", ["site"],
                                        registry=r)
        self.fleet_site_reporting = Gauge("gridminer_fleet_site_reporting",
                                          "1 while the site's last report is fresh (< 3 report intervals old)",
                                          ["site"], registry=r)
        self.fleet_bus_errors = Counter("gridminer_fleet_bus_errors_total",
                                        "Fleet bus operations that failed, by kind (write, read, lease, "
                                        "buckets, report_malformed)", ["kind"], registry=r)

        # Site agent on the fleet bus (miner run --mode site)
        self.bus_connected = Gauge("gridminer_bus_connected", "1 while the site agent is connected to the bus",
                                   ["site"], registry=r)
        self.bus_applied_revision = Gauge("gridminer_bus_applied_revision",
                                          "Highest desired-state revision the site applied", ["site"], registry=r)
        self.bus_desired_level = Gauge("gridminer_bus_desired_level",
                                       "Level of the desired state the site follows (NaN: none in force)",
                                       ["site"], registry=r)
        self.bus_mode = Gauge("gridminer_bus_mode", "1 for the site agent's current mode (following, "
                              "fail_safe, starting)", ["site", "mode"], registry=r)
        self.bus_rejected = Counter("gridminer_bus_rejected_total", "Desired-state records refused, by reason "
                                    "(malformed, bad_signature, wrong_site, stale_revision, expired)",
                                    ["site", "reason"], registry=r)
        self.bus_desired_age = Gauge("gridminer_bus_desired_age_seconds",
                                     "Seconds since the desired state in force was issued", ["site"], registry=r)

        # Bounded children that dashboards and alerts read, created at 0: a panel shows 0
        # rather than no data, and increase() sees the first event (a series born at 1 shows none).
        for stage in BLOCK_STAGES:
            self.blocks.labels(stage)
        for result in UPSTREAM_SHARE_RESULTS:
            self.upstream_shares.labels(result)
        for kind in ("unavailable", "auth"):  # the worded kinds; node codes are rpc_<code>
            self.rpc_errors.labels(kind)
        for kind in FLEET_BUS_ERRORS:
            self.fleet_bus_errors.labels(kind)

        # Build and run
        self.build_info = Gauge("gridminer_build_info", "Always 1; labels say what runs",
                                ["version", "python"], registry=r)
        self.build_info.labels(_version(), platform.python_version()).set(1)
        self.run_info = Info("gridminer_run", "What this daemon runs: chain (main, test, testnet4, signet, "
                             "regtest) and mode (solo, proxy, agent)", registry=r)
        self.network_difficulty = Gauge("gridminer_network_difficulty",
                                        "Difficulty of the chain's next block (from the node's template or "
                                        "the pool's)", registry=r)

        # The standard process and interpreter series, in this registry (not the global one)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)

    def set_run_info(self, *, chain: str, mode: str) -> None:
        """Label gridminer_run_info with the chain and run mode (call once the config is known)."""
        self.run_info.info({"chain": str(chain), "mode": str(mode)})

    def set_network_difficulty(self, difficulty: float) -> None:
        """The chain's current difficulty (from a template's bits or getmininginfo)."""
        self.network_difficulty.set(float(difficulty))


def _version() -> str:
    try:
        return importlib.metadata.version("gridminer")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
