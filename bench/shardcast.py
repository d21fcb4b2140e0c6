"""Benchmark: broadcast one checkpoint to N clients through R relays, against nginx.

    python bench/shardcast.py                      # 1 GiB, 8 clients, 2 relays, 50 MiB shards
    python bench/shardcast.py --size-mb 256 --runs 1 --skip-nginx

What runs (all on 127.0.0.1, all sharing this machine's cores and disk):
- the limit: nginx (installed with apt if missing) serving the checkpoint file directly to
  N `curl` processes that write it to disk, all at once;
- shardcast: an Origin in this process (as inside the trainer), R `swarmrl relay` processes
  mirroring it, and N client processes (ShardcastClient, given every relay URL) that are
  already long-polling when the version is published. Each client verifies every shard and
  every file, fsyncs (durable=True, the library default) and renames the version into place.

Printed: time from publish (manifest signed and announced) until every client holds the
verified version, aggregate throughput, the ratio to the nginx limit measured in the same
run, time from publish to the first shard byte at a client (median and worst), the time the
origin spent hashing and signing, and the peak resident memory (VmHWM) of each relay.
Timings on a shared 2-core machine are noisy: run several times (--runs) and read medians.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MiB = 1024 * 1024

CLIENT = textwrap.dedent("""
    import json, resource, sys, time
    from shardcast.client import ShardcastClient
    from shardcast.fetch import FetchEvents, FetchOptions
    relays, key, cache, out, durable, parallel = sys.argv[1].split(","), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] == "1", int(sys.argv[6])
    first, verified = [], []
    ev = FetchEvents(on_bytes=lambda url, n: first or first.append(time.time()),
                     on_verified=lambda s: verified.append(time.time()))
    c = ShardcastClient(relays, key, cache, durable=durable, events=ev, options=FetchOptions(parallel=parallel))
    v = c.wait_for_version(None, 300)
    announced = time.time()
    path = c.fetch(v)
    done = time.time()
    stats = {s.url: [s.successes, s.failures] for s in c.sources.snapshot()}
    c.close()
    open(out, "w").write(json.dumps({"announced": announced, "first_byte": first[0], "last_shard": max(verified), "done": done, "sources": stats,
                                     "cpu_s": (lambda r: [r.ru_utime, r.ru_stime])(resource.getrusage(resource.RUSAGE_SELF))}))
""")


def make_checkpoint(folder: Path, size: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "bench"}')
    block = os.urandom(64 * MiB)
    with open(folder / "model.safetensors", "wb") as fh:
        left = size
        i = 0
        while left > 0:
            n = min(left, len(block))
            fh.write(block[:n] if i % 2 == 0 else block[n - 1::-1][:n])  # not one repeated block
            left -= n
            i += 1
    return folder


# -- the limit: nginx + curl ---------------------------------------------------------------
def find_nginx() -> str:
    for cand in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if cand and os.path.exists(cand):
            return cand
    print("nginx not found: installing it with apt-get (Debian package) ...", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "nginx-light"], check=False, env=env)
    if not os.path.exists("/usr/sbin/nginx"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "nginx"], check=True, env=env)
    return "/usr/sbin/nginx"


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_nginx(work: Path, ckpt: Path, clients: int) -> dict:
    nginx = find_nginx()
    prefix = work / "nginx"
    shutil.rmtree(prefix, ignore_errors=True)
    (prefix / "logs").mkdir(parents=True)
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(textwrap.dedent(f"""
        daemon off; worker_processes 2; pid {prefix}/nginx.pid; error_log {prefix}/logs/error.log;
        events {{ worker_connections 1024; }}
        http {{ access_log off; sendfile on; tcp_nopush on;
               client_body_temp_path {prefix}/tmp; proxy_temp_path {prefix}/tmp;
               fastcgi_temp_path {prefix}/tmp; uwsgi_temp_path {prefix}/tmp; scgi_temp_path {prefix}/tmp;
               server {{ listen 127.0.0.1:{port}; root {ckpt}; }} }}
    """))
    proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(prefix)], stderr=subprocess.PIPE)
    try:
        wait_port(port)
        out = work / "nginx-out"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        url = f"http://127.0.0.1:{port}/model.safetensors"
        t0 = time.time()
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        curls = [subprocess.Popen(["curl", "-fsS", "-o", str(out / f"c{i}"), "-w", "%{time_starttransfer}",
                                  url], stdout=subprocess.PIPE) for i in range(clients)]
        ttfb = []
        for c in curls:
            stdout, _ = c.communicate()
            ttfb.append(float(stdout or 0))
            if c.returncode != 0:
                raise RuntimeError("curl failed")
        elapsed = time.time() - t0
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        size = (ckpt / "model.safetensors").stat().st_size
        assert all((out / f"c{i}").stat().st_size == size for i in range(clients))
        shutil.rmtree(out)
        return {"seconds": elapsed, "first_byte": statistics.median(ttfb), "first_byte_max": max(ttfb),
                "load": os.getloadavg()[0],
                "cpu": {"curl user": ru1.ru_utime - ru0.ru_utime, "curl sys": ru1.ru_stime - ru0.ru_stime,
                        "nginx": cpu_seconds_tree(proc.pid)}}
    finally:
        proc.terminate()
        proc.wait(10)


def cpu_seconds_tree(pid: int) -> float:
    """CPU seconds of a process and its children (nginx master + workers)."""
    total = cpu_seconds(pid)
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        total += cpu_seconds(int(child))
    return total


def wait_port(port: int, timeout_s: float = 20) -> None:
    import socket
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# -- shardcast -----------------------------------------------------------------------------
def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_shardcast(work: Path, ckpt: Path, clients: int, relays: int, shard_mb: int, durable: bool,
                  parallel: int) -> dict:
    from protocol.identity import KeyPair
    from shardcast.config import OriginConfig
    from shardcast.origin import Origin

    base = work / "sc"
    shutil.rmtree(base, ignore_errors=True)
    operator = KeyPair.generate()
    origin = Origin(OriginConfig(data_dir=base / "origin", port=0, shard_size=shard_mb * MiB), operator, "bench")
    url = origin.start()
    procs: list[subprocess.Popen] = []
    try:
        relay_urls, relay_procs = [], []
        for r in range(relays):
            d = base / f"relay{r}"
            d.mkdir(parents=True)
            p = subprocess.Popen([sys.executable, "-m", "swarmrl", "relay", "--upstream", url,
                                  "--operator-key", operator.public.hex, "--port", "0",
                                  "--set", f"data_dir={d}", "--set", "log_level=warning"],
                                 stdout=open(d / "log", "wb"), stderr=subprocess.STDOUT, cwd=ROOT)
            procs.append(p)
            relay_procs.append(p)
            relay_urls.append(f"http://127.0.0.1:{wait_port_file(d / 'relay.port', p)}")
        outs = []
        for i in range(clients):
            out = base / f"client{i}.json"
            outs.append(out)
            procs.append(subprocess.Popen(
                [sys.executable, "-c", CLIENT, ",".join(relay_urls), operator.public.hex,
                 str(base / f"cache{i}"), str(out), "1" if durable else "0", str(parallel)], cwd=ROOT))
        time.sleep(2.0)  # every client is long-polling its relays now
        cpu0 = time.process_time()
        t0 = time.time()
        origin.publish(ckpt, version=0, step=0)
        t_pub = time.time()
        for p in procs[relays:]:
            if p.wait(600) != 0:
                raise RuntimeError("a client failed")
        rss = [peak_rss_mib(p.pid) for p in relay_procs]
        relay_cpu = [cpu_seconds(p.pid) for p in relay_procs]
        origin_cpu = time.process_time() - cpu0
        res = [json.loads(o.read_text()) for o in outs]
        done = max(r["done"] for r in res)
        first = [r["first_byte"] - t_pub for r in res]
        tails = [r["done"] - r["last_shard"] for r in res]
        return {"seconds": done - t_pub, "first_byte_from_call": statistics.median(first) + (t_pub - t0),
                "load": os.getloadavg()[0], "last_shard": max(r["last_shard"] for r in res) - t_pub,
                "assembly_tail": statistics.median(tails), "seconds_incl_hash": done - t0, "publish_s": t_pub - t0,
                "first_byte": statistics.median(first), "first_byte_max": max(first),
                "relay_rss_mib": rss, "sources": [r["sources"] for r in res],
                "cpu": {"origin (publish + serving)": origin_cpu, "relays": sum(relay_cpu),
                        "clients user": sum(r["cpu_s"][0] for r in res),
                        "clients sys": sum(r["cpu_s"][1] for r in res)}}
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        origin.stop()
        shutil.rmtree(base, ignore_errors=True)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        parts = fh.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def wait_port_file(path: Path, proc: subprocess.Popen, timeout_s: float = 30) -> int:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"relay did not start (see {path.parent / 'log'})")
        time.sleep(0.05)
    return int(path.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--relays", type=int, default=2)
    ap.add_argument("--shard-mb", type=int, default=50)
    ap.add_argument("--parallel", type=int, default=4, help="shard transfers at once per client")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-durable", action="store_true", help="clients skip fsync (not the default)")
    ap.add_argument("--skip-nginx", action="store_true")
    ap.add_argument("--workdir", type=Path, default=None)
    a = ap.parse_args()

    work = a.workdir or Path(tempfile.mkdtemp(prefix="shardcast-bench-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o755)  # nginx workers run as an unprivileged user
    size = a.size_mb * MiB
    print(f"checkpoint {a.size_mb} MiB, {a.clients} clients, {a.relays} relays, {a.shard_mb} MiB shards, "
          f"{os.cpu_count()} cores; workdir {work}", flush=True)
    ckpt = make_checkpoint(work / "ckpt", size)
    total_mib = a.clients * size / MiB
    rows_n, rows_s = [], []
    try:
        for run in range(a.runs):
            if not a.skip_nginx:
                n = run_nginx(work, ckpt, a.clients)
                rows_n.append(n)
                print(f"run {run + 1}: nginx direct      {n['seconds']:6.2f} s  load {n['load']:4.1f}  {total_mib / n['seconds']:7.0f} MiB/s  "
                      f"first byte {n['first_byte']:.3f} s; CPU s: "
                      + ", ".join(f"{k} {v:.1f}" for k, v in n["cpu"].items()), flush=True)
            s = run_shardcast(work, ckpt, a.clients, a.relays, a.shard_mb, not a.no_durable, a.parallel)
            rows_s.append(s)
            print(f"run {run + 1}: shardcast         {s['seconds']:6.2f} s  load {s['load']:4.1f}  {total_mib / s['seconds']:7.0f} MiB/s  "
                  f"first byte {s['first_byte']:.3f} s (worst {s['first_byte_max']:.3f})  publish {s['publish_s']:.2f} s  "
                  f"relay peak RSS {', '.join(f'{m:.0f}' for m in s['relay_rss_mib'])} MiB; last shard verified at "
                  f"{s['last_shard']:.2f} s, assembly (file hashes, fsync, rename) median {s['assembly_tail']:.2f} s; "
                  f"CPU s: " + ", ".join(f"{k} {v:.1f}" for k, v in s["cpu"].items()), flush=True)
    finally:
        if a.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    med = lambda rows, k: statistics.median(r[k] for r in rows)
    print()
    print(f"| scenario ({a.runs} runs, medians) | time until all {a.clients} hold it | aggregate MiB/s "
          f"| first byte at a client | ratio to the limit |")
    print("|---|---|---|---|---|")
    lim = med(rows_n, "seconds") if rows_n else None
    if rows_n:
        print(f"| nginx serving the file directly (curl, written to disk) | {lim:.2f} s | "
              f"{total_mib / lim:.0f} | {med(rows_n, 'first_byte'):.3f} s | 1.00 |")
    t = med(rows_s, "seconds")
    ratio = f"{lim / t:.2f}" if lim else "n/a"
    print(f"| shardcast: origin -> {a.relays} relays -> {a.clients} clients (verified, fsynced) | {t:.2f} s | "
          f"{total_mib / t:.0f} | {med(rows_s, 'first_byte'):.3f} s (worst {max(r['first_byte_max'] for r in rows_s):.3f} s) | {ratio} |")
    print()
    print(f"origin publish (hard-link, hash {a.size_mb} MiB twice on a thread pool, sign): median "
          f"{med(rows_s, 'publish_s'):.2f} s; counting from the publish() call, first byte at a client after "
          f"{med(rows_s, 'first_byte_from_call'):.2f} s and all clients done after {med(rows_s, 'seconds_incl_hash'):.2f} s")
    peak = max(max(r["relay_rss_mib"]) for r in rows_s)
    print(f"peak relay memory (VmHWM): {peak:.0f} MiB; bounded by the process (~70 MiB) + max_transfers (64) x "
          f"2 x 2 MiB blocks, whatever the checkpoint size")
    cpu = {k: statistics.median(r["cpu"][k] for r in rows_s) for k in rows_s[0]["cpu"]}
    print("CPU seconds, shardcast (medians): " + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items()))
    if rows_n:
        cpu_n = {k: statistics.median(r["cpu"][k] for r in rows_n) for k in rows_n[0]["cpu"]}
        print("CPU seconds, nginx + curl (medians): " + ", ".join(f"{k} {v:.1f}" for k, v in cpu_n.items()))
    loads = [r["load"] for r in rows_s + rows_n]
    print(f"times are from publish() returning (manifest signed, announced) to the last client's rename; "
          f"1-minute load average during the runs {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores "
          f"(other jobs share this machine: when it is loaded, the CPU-heavier side loses most)")


if __name__ == "__main__":
    main()
