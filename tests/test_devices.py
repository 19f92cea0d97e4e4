"""Device claims (attention_influence.devices) on a simulated list of devices, in separate processes: N
claims get N distinct devices, claim N+1 waits until one is released, a SIGKILLed holder frees its device."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import dagster as dg
import pytest
from conftest import REPO

from attention_influence import devices as devs
from attention_influence.devices import DevicesBusy, claim_device, holders

SIMULATED = ["sim:0", "sim:1", "sim:2"]
HOLDER = """
import sys
from attention_influence.devices import claim_device
claim = claim_device(sys.argv[1], sys.argv[2].split(","), timeout=30, poll=0.05)
print(claim.device, flush=True)
sys.stdin.read()  # hold the device until stdin closes (or the process is killed)
"""


def start_holder(lock_dir) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock_dir), ",".join(SIMULATED)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.fixture
def holders_of_all(tmp_path):
    procs = [start_holder(tmp_path) for _ in SIMULATED]  # all started at once: concurrent claims
    got = [p.stdout.readline().strip() for p in procs]
    yield procs, got
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def test_concurrent_claims_get_distinct_devices_and_the_next_one_waits(tmp_path, holders_of_all):
    procs, got = holders_of_all
    assert sorted(got) == SIMULATED  # N processes, N different devices
    assert sorted(h.split()[1] for h in holders(tmp_path, SIMULATED)) == SIMULATED
    waited: list[str] = []
    with pytest.raises(DevicesBusy, match="all 3 devices"):  # claim N+1 waits, then times out
        claim_device(tmp_path, SIMULATED, timeout=0.5, poll=0.05, log=waited.append)
    assert len(waited) == 1 and "waiting" in waited[0]
    # released while claim N+1 is waiting (event order: its "waiting" message, then the release): it gets
    # exactly that device
    freed, events = got[1], []

    def release_when_waiting(message: str) -> None:
        events.append("waiting")
        procs[1].stdin.close()  # the holder exits when its stdin closes

    with claim_device(tmp_path, SIMULATED, timeout=60, poll=0.05, log=release_when_waiting) as claim:
        events.append("claimed")
        assert claim.device == freed
    assert events == ["waiting", "claimed"]
    # and once released here, it can be claimed again
    with claim_device(tmp_path, SIMULATED, timeout=0) as again:
        assert again.device == freed


def test_killed_holder_frees_its_device(tmp_path, holders_of_all):
    procs, got = holders_of_all
    with pytest.raises(DevicesBusy):
        claim_device(tmp_path, SIMULATED, timeout=0.2, poll=0.05)
    procs[2].send_signal(signal.SIGKILL)  # no clean-up runs: the kernel drops the flock
    procs[2].wait()
    claim = claim_device(tmp_path, SIMULATED, timeout=10, poll=0.05)
    assert claim.device == got[2]
    claim.release()


def test_a_claim_skips_a_held_device(tmp_path):
    first = claim_device(tmp_path, SIMULATED[:1])
    proc = start_holder(tmp_path)  # sim:0 is held by this process
    assert proc.stdout.readline().strip() == "sim:1"
    proc.stdin.close()
    proc.wait()
    first.release()


def test_selector_model_claims_a_gpu_only_with_several(tmp_path, monkeypatch):
    """The resource's claim: `auto` on a CPU-only machine claims nothing; with a simulated list of two
    devices two steps get one each, under the instance folder, and teardown frees them."""
    from resources import SelectorModel

    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        ctx = dg.build_init_resource_context(instance=instance)
        monkeypatch.setattr(devs, "visible_devices", lambda: [])
        assert SelectorModel(device="auto").claim_device(ctx) == "auto"  # CPU: nothing changes
        monkeypatch.setattr(devs, "visible_devices", lambda: ["sim:0", "sim:1"])
        assert SelectorModel(device="cpu").claim_device(ctx) == "cpu"  # an explicit device is kept
        a, b = SelectorModel(device="auto"), SelectorModel(device="auto", device_wait_seconds=0.2)
        assert a.claim_device(ctx) == "sim:0"
        assert b.claim_device(ctx) == "sim:1"
        assert (tmp_path / "device_claims" / "sim-0.lock").read_text().split() == [str(os.getpid()), "sim:0"]
        with pytest.raises(DevicesBusy):
            SelectorModel(device="auto", device_wait_seconds=0.2).claim_device(ctx)
        a.teardown_after_execution(ctx)
        assert SelectorModel(device="auto", device_wait_seconds=0.2).claim_device(ctx) == "sim:0"


def test_gpu_pool_limit_defaults_to_the_device_count(tmp_path, monkeypatch):
    from ai_assets.sensors import ensure_pool

    (tmp_path / "one").mkdir()
    (tmp_path / "three").mkdir()
    pools = {"concurrency": {"pools": {"default_limit": 1}}}  # what scripts/dagster_home.sh writes on a CPU
    with dg.instance_for_test(overrides=pools, temp_dir=str(tmp_path / "one")) as instance:
        ensure_pool(instance)  # this machine: CPU only (or one GPU)
        assert instance.event_log_storage.get_concurrency_info("gpu").slot_count == devs.gpu_pool_limit()
    monkeypatch.setattr(devs, "visible_devices", lambda: SIMULATED)
    assert devs.gpu_pool_limit() == 3
    with dg.instance_for_test(overrides=pools, temp_dir=str(tmp_path / "three")) as instance:
        ensure_pool(instance)
        assert instance.event_log_storage.get_concurrency_info("gpu").slot_count == 3
