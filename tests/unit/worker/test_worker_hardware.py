"""Batch sizing from the hardware and the lease TTL."""

from protocol.messages import GpuInfo, HardwareReport
from worker.hardware import (
    CPU_SEQUENCES, hardware_report, lease_ahead_delay, lease_ahead_tasks, sequences_per_batch,
    tasks_per_lease_request,
)


def test_hardware_report_describes_this_machine():
    hw = hardware_report()
    assert hw.cpu_count >= 1 and hw.ram_bytes > 0 and hw.torch_version


def test_cpu_batches_are_fixed_and_gpu_batches_grow_with_memory():
    cpu = HardwareReport(cpu_count=2, ram_bytes=1)
    assert sequences_per_batch(cpu, "cpu") == CPU_SEQUENCES
    small = HardwareReport(cpu_count=8, ram_bytes=1, gpus=[GpuInfo(name="a", memory_bytes=8 * 2**30)])
    big = HardwareReport(cpu_count=8, ram_bytes=1, gpus=[GpuInfo(name="a", memory_bytes=8 * 2**30),
                                                         GpuInfo(name="b", memory_bytes=80 * 2**30)])
    assert sequences_per_batch(small, "cuda") == max(CPU_SEQUENCES, 25)
    assert sequences_per_batch(big, "cuda:1") == 256


def test_tasks_per_request_fills_the_batch_but_fits_the_lease_ttl():
    assert tasks_per_lease_request(16, None) == 2          # group size 8 assumed
    assert tasks_per_lease_request(16, 4) == 4
    assert tasks_per_lease_request(16, 32) == 1            # never zero
    assert tasks_per_lease_request(16, 4, configured=7) == 7
    # 10 s per task, 60 s TTL: a third of the TTL holds 2 tasks
    assert tasks_per_lease_request(16, 4, seconds_per_task=10.0, lease_ttl_s=60.0) == 2
    assert tasks_per_lease_request(16, 4, seconds_per_task=100.0, lease_ttl_s=60.0) == 1
    assert tasks_per_lease_request(16, 4, configured=7, seconds_per_task=10.0, lease_ttl_s=60.0) == 2


def test_leasing_ahead_waits_for_the_workers_speed_and_fits_two_thirds_of_the_ttl():
    assert lease_ahead_tasks(4, 4, None, 60.0) == 0             # first batch: speed unknown, nothing ahead
    assert lease_ahead_tasks(4, 4, 1.0, None) == 0
    assert lease_ahead_tasks(4, 4, 1.0, 60.0) == 4              # (4 + 4) s <= 40 s
    # 5 s per task, 60 s TTL: 8 tasks fit two thirds; 4 are generating, so 4 more at most
    assert lease_ahead_tasks(6, 4, 5.0, 60.0) == 4
    assert lease_ahead_tasks(6, 8, 5.0, 60.0) == 0              # the current batch fills the budget
    assert lease_ahead_tasks(6, 4, 50.0, 60.0) == 0             # a slow worker never leases ahead


def test_the_lease_ahead_request_leaves_halfway_less_two_round_trips():
    assert lease_ahead_delay(10.0, 0.5) == 4.0      # leases arrive ~4 s before the engine is free
    assert lease_ahead_delay(10.0, 0.0) == 5.0
    assert lease_ahead_delay(1.0, 0.4) == 0.0       # a short batch or a slow link: at once
