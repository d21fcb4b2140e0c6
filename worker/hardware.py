"""What this machine is, and how much work to ask for.

`hardware_report` fills the (informational, untrusted) `HardwareReport` of a registration from
os and torch. `sequences_per_batch`, `tasks_per_lease_request` and `lease_ahead_tasks` turn
the hardware and the observed batch times into how many leases to ask for: a batch must be big
enough to keep the device busy, and small enough to be finished and submitted well inside the
lease TTL, also when it was leased ahead while the previous batch generated. All three
are pure functions of their inputs so that tests can pin the rules.
"""

from __future__ import annotations

import os
import platform

from protocol.messages import GpuInfo, HardwareReport

# Sequences decoded together. On a CPU the gain flattens out past ~16 (FACTS.md: batch 16
# gives ~9x batch 1 on the tiny model); on a GPU the KV cache, not compute, is the limit, so
# scale with memory (a rough 32 sequences per 10 GiB keeps a 7B model's cache in bounds).
CPU_SEQUENCES = 16
GPU_SEQUENCES_PER_GIB = 3.2
MAX_SEQUENCES = 512


def _ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def hardware_report() -> HardwareReport:
    import torch

    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append(GpuInfo(name=p.name[:200], memory_bytes=int(p.total_memory)))
    return HardwareReport(
        cpu_count=os.cpu_count() or 0, ram_bytes=_ram_bytes(), gpus=gpus,
        torch_version=torch.__version__[:100], platform=platform.platform()[:200],
    )


def sequences_per_batch(hw: HardwareReport, device: str) -> int:
    """How many sequences to decode in one batch on `device` ('cpu', 'cuda', 'cuda:1')."""
    if device.startswith("cuda") and hw.gpus:
        idx = int(device.split(":", 1)[1]) if ":" in device else 0
        gib = hw.gpus[min(idx, len(hw.gpus) - 1)].memory_bytes / 2**30
        return max(CPU_SEQUENCES, min(MAX_SEQUENCES, int(gib * GPU_SEQUENCES_PER_GIB)))
    return CPU_SEQUENCES


def tasks_per_lease_request(target_sequences: int, group_size: int | None, configured: int = 0,
                            seconds_per_task: float | None = None, lease_ttl_s: float | None = None) -> int:
    """Leases to ask for in one request.

    `configured` (cfg.max_tasks) when set, else enough tasks to fill `target_sequences` (one
    sequence per seed; `group_size` is learnt from the first lease, 8 is assumed before); in
    both cases no more than fit in a third of the lease TTL at the observed
    `seconds_per_task`, so a slow or shared machine still submits in time. At least one."""
    n = configured if configured > 0 else max(1, target_sequences // max(1, group_size or 8))
    if seconds_per_task and seconds_per_task > 0 and lease_ttl_s:
        n = min(n, int(lease_ttl_s / 3 / seconds_per_task))
    return max(1, n)


def lease_ahead_tasks(n: int, current_tasks: int, seconds_per_task: float | None,
                      lease_ttl_s: float | None) -> int:
    """Tasks to lease ahead (the next request, sent while `current_tasks` generate): at most `n`,
    and only as many as still finish within two thirds of their TTL after the current batch
    ((current + ahead) x seconds_per_task <= 2/3 TTL: a lease leased ahead waits one batch, then
    takes its own, and keeps the last third for sending and verification as
    `tasks_per_lease_request` does). 0 until the worker's speed and the TTL are known (its first
    batch), so a worker never holds work it has not shown it can finish in time. The
    coordinator's caps (`limits.max_leases_per_worker`, lease sizing) still decide what it gets."""
    if not seconds_per_task or seconds_per_task <= 0 or not lease_ttl_s:
        return 0
    room = int(lease_ttl_s * 2 / 3 / seconds_per_task) - current_tasks
    return max(0, min(n, room))


def lease_ahead_delay(batch_s: float, lease_rtt_s: float) -> float:
    """When to send the lease-ahead request, in seconds after a batch of `batch_s` (expected)
    started: halfway through, less two of the last lease request's durations, so the leases
    arrive before the engine is free with room for a slow answer or a slower batch, and are
    issued as late as that allows (a later lease allows newer policy versions: less version
    lag at consumption). 0 when the batch is shorter than that."""
    return max(0.0, batch_s / 2 - 2 * lease_rtt_s)
