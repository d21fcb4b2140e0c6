"""The demo's swarm placed on the simulated internet: each role in its site's namespace.

    wan = plan_wan_swarm(net, root, model_dir, SwarmSettings(...))
    with ProcessGroup(wan.plan.logs) as group:
        wan.start(group)                 # coordinator, trainer+origin, verifier | relays | workers
        wan.stats()                      # GET /v1/stats, asked from the operator's namespace

The configs are the ones `swarmrl.swarm.plan_swarm` writes for a local swarm (the same files an
operator writes), with what a deployment across the internet changes merged in through
`SwarmSettings.overrides`: every service listens on its site's address at a fixed port (each
namespace has its own ports), roles find the coordinator by name (`coordinator.wan`, from the
namespaces' /etc/hosts, so it can move), the relays are the region sites' (one relay config per
region; the coordinator advertises them all), workers' libp2p nodes listen on every address and
announce their own (a worker behind a NAT announces a private address nobody can dial: it
only dials out), and the coordinator exempts only the operator's own address (trainer and
verifier share it) from its per-address limits: workers are counted by their real addresses.

The plan's workers (`worker-1..`, then `cheater-1..`) take the topology's worker sites in order.
`VersionLag` reads the trainer's checkpoints (versions/<N>/state.json lists the groups step
N-1 -> N trained, with their policy versions) for the version lag at consumption.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx

from coordinator.config import LOOPBACK
from protocol.config import load_config
from shardcast.config import RelayConfig
from shardcast.p2p import bootstrap_multiaddr
from swarmrl.procs import ProcessGroup, child_env, write_config
from swarmrl.swarm import SwarmPlan, SwarmSettings, plan_swarm
from tests.wan.netns import InNamespace, Net

COORDINATOR_NAME = "coordinator.wan"
COORDINATOR_PORT, ORIGIN_PORT, RELAY_PORT, P2P_PORT = 8700, 8750, 8800, 4001


@dataclass
class WanSwarm:
    net: Net
    plan: SwarmPlan
    relay_configs: dict[str, Path]       # region site -> its relay's config
    site_of: dict[str, str]              # role name -> site
    coordinator_url: str
    _observer: InNamespace | None = field(default=None, repr=False)

    @property
    def relay_urls(self) -> list[str]:
        return [f"http://{self.net.topo.site(r).address}:{RELAY_PORT}" for r in self.relay_configs]

    def start(self, group: ProcessGroup, *, workers: bool = True) -> None:
        """Start every role in its site's namespace, in the order of the data flow."""
        env = child_env(threads=1, extra=self.plan.settings.env)
        for role in ("coordinator", "trainer", "verifier"):
            self.start_role(group, role, env)
        for region, path in self.relay_configs.items():
            group.start(region, ["relay", "--config", str(path)], env=env, prefix=self.net.exec_prefix(region))
        if workers:
            for name in self.plan.worker_names + self.plan.cheater_names:
                self.start_role(group, name, env)

    def start_role(self, group: ProcessGroup, name: str, env: dict | None = None) -> None:
        """(Re)start one role of the plan (a worker, the coordinator, ...) in its site's namespace."""
        env = env or child_env(threads=1, extra=self.plan.settings.env)
        prefix = self.net.exec_prefix(self.site_of[name])
        path = str(self.plan.configs[name])
        if name in self.plan.cheater_names:
            group.start(name, ["--config", path, "--cheat", self.plan.settings.cheat], env=env,
                        module="swarmrl.adversary", nice=self.plan.settings.worker_nice, prefix=prefix)
        elif name in self.plan.worker_names:
            group.start(name, ["worker", "--config", path], env=env, nice=self.plan.settings.worker_nice, prefix=prefix)
        else:
            group.start(name, [name, "--config", path], env=env, prefix=prefix)

    # -- observing from the operator's side --------------------------------------------------------
    def observer(self) -> InNamespace:
        if self._observer is None:
            self._observer = InNamespace(self.net, "operator")
        return self._observer

    @property
    def observed_url(self) -> str:
        """The coordinator's URL for this process (the host's /etc/hosts does not know the name)."""
        return f"http://{self.net.hosts[COORDINATOR_NAME]}:{COORDINATOR_PORT}"

    def get(self, path: str, *, base: str | None = None, timeout: float = 10.0,
            operator: bool = False) -> httpx.Response:
        """GET from the operator's site; `operator`: with the operator token (the full views)."""
        url = (base or self.observed_url) + path
        headers = {"Authorization": f"Bearer {self.plan.operator_token}"} if operator else {}
        return self.observer().call(lambda: httpx.get(url, timeout=timeout, headers=headers), timeout=timeout + 5)

    def stats(self, operator: bool = False) -> dict:
        try:
            r = self.get("/v1/stats", operator=operator)
            return r.json() if r.status_code == 200 else {}
        except (httpx.HTTPError, ValueError, TimeoutError):
            return {}

    def close(self) -> None:
        if self._observer is not None:
            self._observer.close()
            self._observer = None


def plan_wan_swarm(net: Net, root: Path, model_dir: Path, s: SwarmSettings) -> WanSwarm:
    topo = net.topo
    op = topo.operator.address
    regions = topo.regions
    if not regions:
        raise ValueError("the topology has no region site for a relay")
    names = [f"worker-{i + 1}" for i in range(s.honest_workers)] + [f"cheater-{i + 1}" for i in range(s.cheaters)]
    sites = [w.name for w in topo.workers]
    if len(sites) < len(names):
        raise ValueError(f"{len(names)} workers need as many worker sites; the topology has {len(sites)}")
    site_of = {"coordinator": "operator", "trainer": "operator", "verifier": "operator",
               **dict(zip(names, sites))}
    coord_url = f"http://{COORDINATOR_NAME}:{COORDINATOR_PORT}"
    relay_urls = [f"http://{r.address}:{RELAY_PORT}" for r in regions]
    root.mkdir(parents=True, exist_ok=True)
    from protocol.identity import KeyPair

    coord_peer = KeyPair.load_or_create(root / "keys" / "coordinator.key").peer_id
    boot = bootstrap_multiaddr(op, P2P_PORT, coord_peer)
    first = regions[0]
    wan = {
        "coordinator": {"host": op, "port": COORDINATOR_PORT, "relays": relay_urls,
                        "limits": {"exempt_addresses": [*LOOPBACK, op]},
                        "p2p": {"listen_host": op, "listen_port": P2P_PORT}},
        "trainer": {"coordinator_url": coord_url, "origin": {"host": op, "port": ORIGIN_PORT}},
        "verifier": {"coordinator_url": coord_url, "relays": relay_urls},
        "relay": {"upstreams": [f"http://{op}:{ORIGIN_PORT}"], "host": first.address, "port": RELAY_PORT,
                  "region": first.name, "capacity_mbps": first.up_mbps,
                  "p2p": {"bootstrap": [boot], "listen_host": first.address, "listen_port": P2P_PORT}},
        **{n: {"coordinator_url": coord_url,
               "p2p": {"listen_host": "0.0.0.0", "listen_port": P2P_PORT,
                       "announce_host": topo.site(site_of[n]).address}} for n in names},
    }
    merged = {k: _merge(wan.get(k, {}), s.overrides.get(k, {})) for k in {*wan, *s.overrides}}
    plan = plan_swarm(root, model_dir, replace(s, overrides=merged))
    relay_configs = {first.name: plan.configs["relay"]}
    base = load_config(RelayConfig, plan.configs["relay"])
    for r in regions[1:]:
        cfg = base.model_copy(update={
            "host": r.address, "data_dir": root / r.name, "region": r.name, "capacity_mbps": r.up_mbps,
            "p2p": base.p2p.model_copy(update={"listen_host": r.address})})
        relay_configs[r.name] = write_config(root / "config" / f"{r.name}.toml", cfg)
    for r in regions:
        site_of[r.name] = r.name
    return WanSwarm(net, plan, relay_configs, site_of, coord_url)


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class VersionLag:
    """Samples, in a thread, the groups each new version trained and their policy versions:
    lag = (N - 1) - policy version of each group that step N-1 -> N trained."""

    def __init__(self, trainer_dir: Path, every_s: float = 2.0):
        self.root = Path(trainer_dir) / "versions"
        self.every_s = every_s
        self.lags: dict[int, list[int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="version-lag")

    def __enter__(self) -> "VersionLag":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sample()

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()

    def sample(self) -> None:
        try:
            folders = [p for p in self.root.iterdir() if p.name.isdigit() and int(p.name) not in self.lags]
        except OSError:
            return
        for p in folders:
            try:
                state = json.loads((p / "state.json").read_text())
            except (OSError, ValueError):
                continue
            n = int(p.name)
            self.lags[n] = [(n - 1) - int(v) for _, v in state.get("trained", [])]

    def between(self, first: int, last: int) -> list[int]:
        return [lag for v, lags in self.lags.items() if first < v <= last for lag in lags]

