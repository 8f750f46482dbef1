#!/usr/bin/env python3
"""Gates under load (run through bench/gates.sh).

A stable release serves under steady keep-alive load; CPU hogs load every
core; then the *same* code is deployed again as a canary, ROUNDS times
judged against the stable set (`baseline = "stable"`, the default) and
ROUNDS times on absolute limits (`baseline = "absolute"`, `max_p99 =
MAX_P99`). Each deploy's outcome and its gates' last p99 (new set, and the
limit the gates used) come from the deploy's own record.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import deploy as d  # noqa: E402  (the deploy bench's Gantry and Load)

ROUNDS = int(os.environ.get("ROUNDS", "3"))
HOGS = int(os.environ.get("HOGS", "8"))
MAX_P99 = os.environ.get("MAX_P99", "5ms")

d.CONFIG = """
[app]
name = "hello"

[run]
command = "./hello-app"
instances = 2
grace_period = "5s"

[health.readiness]
kind = "http"
path = "/readiness"
interval = "200ms"
timeout = "200ms"
success_threshold = 1
failure_threshold = 20

[deploy]
{deploy}

[analysis]
interval = "500ms"
min_requests = 50
max_p99 = "%s"
{env}

[proxy]
hosts = ["hello.test"]
""" % MAX_P99


def main():
    tmp = tempfile.mkdtemp(prefix="gantry-gates-")
    g = d.Gantry(tmp)
    hogs = []
    rows = []
    try:
        # APP_VERSION stays the same: the same code and config every time.
        canary = 'strategy = "canary"\nsteps = [{ weight = 30, pause = "4s" }]'
        n, _ = g.release('strategy = "blue-green"\nrollback_window = "1s"', "")
        g.deploy(n)
        load = d.Load(g.port)
        d.wait_for(lambda: len(load.snapshot()) > 500, what="load")
        # On a quiet machine, the absolute limit holds for this code.
        for baseline in ["quiet: stable", "quiet: absolute"]:
            rows.append(one(g, canary, baseline))
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(HOGS)]
        time.sleep(2)
        for baseline in ["stable", "absolute"] * ROUNDS:
            rows.append(one(g, canary, baseline))
        records = load.finish()
        failed = len(d.failures(records))
    finally:
        for h in hogs:
            h.kill()
        g.stop()
    print(f"gates under load: {HOGS} CPU hogs on {os.cpu_count()} cores, {d.CLIENTS} clients, identical code, absolute max_p99 {MAX_P99}")
    print(f"{'baseline':16} {'outcome':13} {'p99 (new)':10} limit the gates used")
    for b, o, v, t in rows:
        print(f"{b:16} {o:13} {v:10} {t}")
    for b in ("quiet: stable", "quiet: absolute", "stable", "absolute"):
        got = [o for bb, o, _, _ in rows if bb == b]
        print(f"{b}: {got.count('succeeded')}/{len(got)} succeeded")
    print(f"failed requests: {failed}")


def one(g, canary, label):
    baseline = label.split()[-1]
    n, _ = g.release(canary, f'baseline = "{baseline}"')
    g.deploy(n, check=False)
    info = g.show(g.last_deploy()["id"])
    gates = {x["name"]: x for x in info["gates"]}
    p99 = gates.get("p99 latency", {})
    d.log(f"{label:16} {info['outcome']:12} p99 {p99.get('value', '-')} ({p99.get('threshold', '-')})")
    return (label, info["outcome"], p99.get("value", "-"), p99.get("threshold", "-"))


if __name__ == "__main__":
    main()
