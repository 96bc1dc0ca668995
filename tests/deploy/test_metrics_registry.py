"""What a gridminer registry exports besides its own metrics: the standard process and
python series, no `*_created` series, and the run's chain, mode and network difficulty."""

from __future__ import annotations


from prometheus_client import generate_latest

from miner.metrics import Metrics


def test_process_and_python_series_are_in_the_injected_registry():
    m = Metrics()
    for name in ("process_start_time_seconds", "process_cpu_seconds_total", "process_resident_memory_bytes",
                 "process_open_fds"):
        assert m.registry.get_sample_value(name) is not None, name
    assert m.registry.get_sample_value("process_start_time_seconds") > 1.6e9
    assert m.registry.get_sample_value("process_open_fds") >= 3
    info = [s for f in m.registry.collect() if f.name == "python_info" for s in f.samples]
    assert len(info) == 1 and info[0].value == 1 and info[0].labels["implementation"]
    # the registry is the run's own: another registry has its own collectors
    assert Metrics().registry is not m.registry


def test_no_created_series():
    m = Metrics()
    m.blocks.labels("found").inc()
    m.tip_to_job.observe(0.1)
    text = generate_latest(m.registry).decode()
    assert "_created" not in text.replace("gridminer_job_created_timestamp_seconds", "")
    assert "gridminer_blocks_total" in text


def test_run_info_and_network_difficulty():
    m = Metrics()
    m.set_run_info(chain="regtest", mode="solo")
    m.set_network_difficulty(4.656542373906925e-10)
    assert m.registry.get_sample_value("gridminer_run_info", {"chain": "regtest", "mode": "solo"}) == 1
    assert m.registry.get_sample_value("gridminer_network_difficulty") == 4.656542373906925e-10
    m.set_run_info(chain="main", mode="proxy")   # the info replaces, never accumulates
    samples = [s for f in m.registry.collect() if f.name == "gridminer_run" for s in f.samples]
    assert [s.labels for s in samples] == [{"chain": "main", "mode": "proxy"}]
