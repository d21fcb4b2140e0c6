"""Building the simulated internet of a `Topology` on this machine, and tearing it down.

    with Net(topology) as net:                # as root; namespaces, links, NAT, names
        net.exec_prefix("worker-3")           # ["ip", "netns", "exec", <ns>]: start a process there
        net.control({"op": "partition", ...}) # the emulator's control socket (tests.wan.internet)
        net.point_name("coordinator.wan", "10.77.1.2")

Every site gets a network namespace of its own (`swwan<pid>-<site>`, so two runs never meet and
a crashed run's leftovers can be swept by `sweep_stale`). Sites with an access link get a TUN
device from the emulator process (tests.wan.internet); a worker behind a NAT gets a veth pair
to its NAT site's namespace, a private address (192.168.N.2) and a default route through it,
and the NAT site masquerades (nftables) what leaves its `wan0`: the worker dials out and is
never reachable from the core, which routes no private address. Host names (`Topology.names`,
e.g. coordinator.wan) are written to `/etc/netns/<ns>/hosts`, which `ip netns exec` mounts
over /etc/hosts for every process it starts; `point_name` rewrites them in place (same inode,
so running processes see the change at their next lookup).

Only addresses inside these namespaces are used; nothing touches the host's own interfaces.
`available()` says why the harness cannot run here (not root, no `ip`, no TUN, no nft).
"""

from __future__ import annotations

import ctypes
import json
import os
import queue
import threading
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from swarmrl.procs import session_priority
from tests.wan.topology import Topology

PREFIX = "swwan"
ROOT = Path(__file__).resolve().parents[2]
CLONE_NEWNET = 0x40000000


def available() -> tuple[bool, str]:
    """(True, "") when namespaces, TUN and nftables can be used here, else (False, why)."""
    if os.geteuid() != 0:
        return False, "the WAN harness needs root (ip netns, TUN devices, nftables)"
    for tool, pkg in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            return False, f"`{tool}` is not installed (apt-get install -y {pkg})"
    if not os.path.exists("/dev/net/tun"):
        return False, "/dev/net/tun is missing (the emulator needs TUN devices)"
    probe = f"{PREFIX}probe{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return False, f"cannot create a network namespace: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return True, ""


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(list(args), capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip() or r.stdout.strip()}")
    return r


def sweep_stale() -> list[str]:
    """Delete namespaces (and their /etc/netns folders) left by WAN runs whose process is gone."""
    out = _run("ip", "netns", "list", check=False).stdout.split("\n")
    gone = []
    for line in out:
        name = line.split(" ", 1)[0].strip()
        if not name.startswith(PREFIX) or "-" not in name:
            continue
        pid = name[len(PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            _run("ip", "netns", "del", name, check=False)
            shutil.rmtree(f"/etc/netns/{name}", ignore_errors=True)
            gone.append(name)
    return gone


class Net:
    def __init__(self, topo: Topology, *, seed: int = 0, workdir: Path | None = None):
        self.topo = topo
        self.tag = str(os.getpid())
        self.seed = seed
        self._own_work = workdir is None   # a folder it made itself, it removes at down()
        self.work = Path(workdir or tempfile.mkdtemp(prefix="swarmrl-wan-"))
        self.ns = {s.name: f"{PREFIX}{self.tag}-{s.name}" for s in topo.sites}
        self.hosts: dict[str, str] = {h: topo.site(site).address for h, site in topo.names.items()}
        self.emulator: subprocess.Popen | None = None
        self.work.mkdir(parents=True, exist_ok=True)
        self.control_path = f"/tmp/{PREFIX}{self.tag}.sock"   # short: a Unix socket path has 107 bytes

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> "Net":
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def up(self) -> None:
        ok, why = available()
        if not ok:
            raise RuntimeError(why)
        sweep_stale()
        for site, ns in self.ns.items():
            _run("ip", "netns", "add", ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        self._write_hosts()
        self._start_emulator()
        for nat in self.topo.of_kind("nat"):
            self._build_nat(nat.name, [w for w in self.topo.sites if w.nat == nat.name])

    def down(self) -> None:
        if self.emulator is not None and self.emulator.poll() is None:
            self.emulator.send_signal(signal.SIGTERM)
            try:
                self.emulator.wait(10)
            except subprocess.TimeoutExpired:
                self.emulator.kill()
                self.emulator.wait(5)
        for ns in self.ns.values():
            _run("ip", "netns", "del", ns, check=False)
            shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)
        Path(self.control_path).unlink(missing_ok=True)
        if self._own_work:
            shutil.rmtree(self.work, ignore_errors=True)

    def _start_emulator(self) -> None:
        spec = {"tag": self.tag, "mtu": self.topo.mtu, "seed": self.seed, "control": self.control_path,
                "sites": [{"name": s.name, "ns": self.ns[s.name], "address": s.address, "up_mbps": s.up_mbps,
                           "down_mbps": s.down_mbps, "delay_ms": s.delay_ms, "loss": s.loss}
                          for s in self.topo.linked()]}
        path = self.work / "internet.json"
        path.write_text(json.dumps(spec))
        log = open(self.work / "internet.log", "wb")
        # The emulator is the wire: it runs a little ahead of the roles (nice -5) so that a busy
        # core delays packets less (its CPU is set by the traffic, not by its priority). Its own
        # session's priority too: see swarmrl.procs.session_priority.
        self.emulator = subprocess.Popen([sys.executable, "-m", "tests.wan.internet", str(path)], cwd=ROOT,
                                         stdout=subprocess.PIPE, stderr=log, start_new_session=True,
                                         preexec_fn=lambda: session_priority(-5))
        log.close()
        line = self.emulator.stdout.readline()
        if line.strip() != b"ready":
            self.emulator.wait(5)
            raise RuntimeError("the link emulator did not start: " + (self.work / "internet.log").read_text()[-2000:])

    def _build_nat(self, nat: str, behind: list) -> None:
        nat_ns = self.ns[nat]
        _run("ip", "netns", "exec", nat_ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for j, w in enumerate(behind):
            inside = w.address.rsplit(".", 1)[0]
            lan = f"lan{j}"
            _run("ip", "-n", nat_ns, "link", "add", lan, "mtu", str(self.topo.mtu), "type", "veth",
                 "peer", "name", "eth0", "netns", self.ns[w.name])
            _run("ip", "-n", nat_ns, "addr", "add", f"{inside}.1/24", "dev", lan)
            _run("ip", "-n", nat_ns, "link", "set", lan, "up")
            wns = self.ns[w.name]
            _run("ip", "-n", wns, "link", "set", "eth0", "mtu", str(self.topo.mtu), "up")
            _run("ip", "-n", wns, "addr", "add", f"{w.address}/24", "dev", "eth0")
            _run("ip", "-n", wns, "route", "add", "default", "via", f"{inside}.1")
        rules = ("table ip nat {\n chain postrouting {\n  type nat hook postrouting priority 100;\n"
                 '  oifname "wan0" masquerade\n }\n}\n'
                 "table ip filter {\n chain forwarding {\n  type filter hook forward priority 0; policy drop;\n"
                 '  iifname "lan*" accept\n  ct state established,related accept\n }\n}\n')
        r = subprocess.run(["ip", "netns", "exec", nat_ns, "nft", "-f", "-"], input=rules, text=True,
                           capture_output=True)
        if r.returncode != 0:
            raise RuntimeError(f"nft in {nat_ns}: {r.stderr.strip()}")

    # -- names ----------------------------------------------------------------------------------
    def _write_hosts(self) -> None:
        text = "127.0.0.1 localhost\n" + "".join(f"{a} {h}\n" for h, a in sorted(self.hosts.items()))
        for ns in self.ns.values():
            d = Path(f"/etc/netns/{ns}")
            d.mkdir(parents=True, exist_ok=True)
            with open(d / "hosts", "r+" if (d / "hosts").exists() else "w") as fh:  # same inode: seen by bind mounts
                fh.seek(0)
                fh.write(text)
                fh.truncate()

    def point_name(self, host: str, address: str) -> None:
        """Make `host` resolve to `address` in every namespace (a DNS change, seen at the next lookup)."""
        self.hosts[host] = address
        self._write_hosts()

    # -- use ------------------------------------------------------------------------------------
    def exec_prefix(self, site: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns[site]]

    def sh(self, site: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return _run(*self.exec_prefix(site), *args, check=check)

    def add_address(self, site: str, address: str) -> None:
        """Give `site` a second public address (its wan0) and route it to the site."""
        _run("ip", "-n", self.ns[site], "addr", "add", f"{address}/16", "dev", "wan0")
        self.control({"op": "alias", "site": site, "address": address})

    def control(self, cmd: dict) -> dict:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(self.control_path)
            s.sendall(json.dumps(cmd).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                data += chunk
        reply = json.loads(data)
        if not reply.get("ok"):
            raise RuntimeError(f"emulator refused {cmd}: {reply.get('error')}")
        return reply

    def stats(self) -> dict:
        return self.control({"op": "stats"})

    def wait_reachable(self, site: str, address: str, port: int, timeout_s: float = 60.0) -> None:
        """Wait until a TCP connect from `site` to address:port succeeds."""
        deadline = time.monotonic() + timeout_s
        code = ("import socket,sys\ntry:\n socket.create_connection((sys.argv[1], int(sys.argv[2])), 3).close()\n"
                "except OSError: sys.exit(1)\n")
        while True:
            if self.sh(site, sys.executable, "-c", code, address, str(port), check=False).returncode == 0:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{address}:{port} not reachable from {site} within {timeout_s:.0f} s")
            time.sleep(0.5)


class InNamespace:
    """A thread that lives in one site's network namespace: `call(fn, *args)` runs `fn` there,
    so the sockets it opens (httpx, a probe) are that site's. How the test process, which stays
    in the host's namespace, reads the coordinator's /v1/stats across the simulated internet.
    (setns(2) through ctypes: Python 3.11 has no os.setns; it moves only the calling thread.)"""

    def __init__(self, net: "Net", site: str):
        self._jobs: queue.Queue = queue.Queue()
        self._ready = threading.Event()
        self._error: list[BaseException] = []
        self._thread = threading.Thread(target=self._main, args=(f"/var/run/netns/{net.ns[site]}",), daemon=True,
                                        name=f"netns-{site}")
        self._thread.start()
        self._ready.wait(10)
        if self._error:
            raise RuntimeError(f"cannot enter the namespace of {site}: {self._error[0]}")

    def _main(self, path: str) -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns failed")
            finally:
                os.close(fd)
        except OSError as exc:
            self._error.append(exc)
            self._ready.set()
            return
        self._ready.set()
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, args, box, done = job
            try:
                box.append((True, fn(*args)))
            except BaseException as exc:  # handed back to the caller
                box.append((False, exc))
            done.set()

    def call(self, fn, *args, timeout: float = 60.0):
        box: list = []
        done = threading.Event()
        self._jobs.put((fn, args, box, done))
        if not done.wait(timeout):
            raise TimeoutError(f"{getattr(fn, '__name__', fn)} did not finish in {timeout:.0f} s")
        ok, value = box[0]
        if not ok:
            raise value
        return value

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(5)
