#!/usr/bin/env python3
"""Deploy benchmark: Gantry's blue-green switch and rollbacks vs a scripted
nginx-reload blue-green switch, under the same steady keep-alive load.

Run through bench/deploy.sh (it builds the binaries and installs nginx).
Every figure comes from this run: the load clients log each request's send
time, answer and version; the Gantry side also reads each deploy's timeline
(millisecond timestamps from the same clock).

Figures (medians over ROUNDS):
  switch        time from "the new set is ready" (Gantry: the timeline entry
                of the switch decision; nginx: the new backend answered its
                readiness probe) to the first request answered by the new
                version (as the load clients saw it).
  applied       Gantry: from the switch decision to the proxy's answer to
                the route change (the timeline's own figure).
  mixed window  from the first request answered by the new version to the
                last request *sent after it* that the old version answered
                (0 for an atomic switch).
  overhead      Gantry: the deploy's wall time minus app boot (start ->
                ready) and the configured warm window; the control plane's
                own share.
  warm rollback `gantry rollback` during the warm window / nginx: config
                back + reload; from the command to the last request answered
                by the new version.
  auto rollback Gantry: a canary answering 500 to everything; from its
                "gate failed" decision to its last answered request, and from
                its first error to its last (detection included).
  failed        requests without an HTTP answer or with a status other than
                200 that the app did not produce on purpose.
"""
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GANTRY = os.environ.get("GANTRY_BIN", os.path.join(ROOT, "target/release/gantry"))
APP = os.environ.get("APP_BIN", os.path.join(ROOT, "target/examples/release/hello-app"))
ROUNDS = int(os.environ.get("ROUNDS", "5"))
CLIENTS = int(os.environ.get("CLIENTS", "4"))
PORT_BASE = int(os.environ.get("PORT_BASE", "18500"))
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def now_ms():
    return time.time() * 1000.0


class Load:
    """CLIENTS threads, each on one keep-alive connection (reopened after an
    error), GET / with Host hello.test as fast as answers come."""

    def __init__(self, port):
        self.port = port
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.records = []  # (sent_ms, done_ms, status, version or error)
        self.threads = [threading.Thread(target=self.client, daemon=True) for _ in range(CLIENTS)]
        for t in self.threads:
            t.start()

    def client(self):
        conn = None
        local = []
        while not self.stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            sent = now_ms()
            try:
                conn.request("GET", "/", headers={"Host": "hello.test"})
                r = conn.getresponse()
                body = r.read().decode(errors="replace")
                version = body.split()[2] if body.startswith("hello from") else body[:40]
                if body.startswith("injected error"):
                    version = "injected:" + body.split()[-1]
                local.append((sent, now_ms(), r.status, version))
                if r.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except Exception as e:  # no HTTP answer: a failed request
                local.append((sent, now_ms(), 0, type(e).__name__))
                conn.close()
                conn = None
            if len(local) >= 256:
                with self.lock:
                    self.records.extend(local)
                local = []
        with self.lock:
            self.records.extend(local)

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join()
        return sorted(self.records)

    def snapshot(self):
        with self.lock:
            return sorted(self.records)


def first_answer(records, version, after=0.0):
    """The send time of the first request after `after` answered by `version`."""
    for sent, _, status, v in records:
        if sent >= after and status == 200 and v == version:
            return sent
    return None


def last_answer(records, version, after=0.0):
    last = None
    for sent, _, status, v in records:
        if sent >= after and v == version:
            last = sent
    return last


def failures(records, t0=0.0, t1=float("inf")):
    return [r for r in records if t0 <= r[0] <= t1 and r[2] != 200 and not str(r[3]).startswith("injected:")]


def wait_for(pred, timeout=60, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.01)
    raise SystemExit(f"timed out waiting for {what}")


def http_ok(port, path="/readiness"):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        c.request("GET", path)
        ok = c.getresponse().status == 200
        c.close()
        return ok
    except Exception:
        return False


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# --- Gantry --------------------------------------------------------------

CONFIG = """
[app]
name = "hello"

[run]
command = "./hello-app"
instances = 2
grace_period = "5s"

[health.readiness]
kind = "http"
path = "/readiness"
interval = "100ms"
timeout = "100ms"
success_threshold = 1

[deploy]
{deploy}

[analysis]
interval = "250ms"
min_requests = 20

[env]
APP_VERSION = "{version}"
{env}

[proxy]
hosts = ["hello.test"]
"""


class Gantry:
    def __init__(self, tmp):
        self.tmp = tmp
        self.data = os.path.join(tmp, "gantry-data")
        self.port = PORT_BASE
        pstate = os.path.join(tmp, "proxy")
        self.proxy = subprocess.Popen(
            [GANTRY, "proxy", "--listen", f"127.0.0.1:{self.port}", "--access-log", "off", "--state-dir", pstate],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        admin = os.path.join(pstate, "admin.sock")
        wait_for(lambda: os.path.exists(admin), what="gantry proxy")
        self.server = subprocess.Popen(
            [GANTRY, "server", "--data-dir", self.data, "--proxy-admin", admin,
             "--proxy-addr", f"127.0.0.1:{self.port}", "--port-range", f"{PORT_BASE + 100}-{PORT_BASE + 199}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.env = dict(os.environ, GANTRY_DATA_DIR=self.data)
        self.env.pop("GANTRY_SERVER", None)
        self.env.pop("GANTRY_TOKEN", None)
        wait_for(lambda: self.run("whoami", check=False).returncode == 0, what="gantry server")
        self.src = os.path.join(tmp, "src")
        os.makedirs(self.src, exist_ok=True)
        shutil.copy(APP, os.path.join(self.src, "hello-app"))
        self.n = 0

    def run(self, *args, check=True):
        r = subprocess.run([GANTRY, *args], cwd=self.tmp, env=self.env, capture_output=True, text=True)
        if check and r.returncode != 0:
            raise SystemExit(f"gantry {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return r

    def release(self, deploy, env=""):
        self.n += 1
        version = f"v{self.n}"
        toml = CONFIG.format(deploy=deploy, version=version, env=env)
        for d in (self.src, self.tmp):
            with open(os.path.join(d, "gantry.toml"), "w") as f:
                f.write(toml)
        self.run("config", "apply", "--env", "production")
        r = self.run("--json", "build", "--env", "production", "--dir", self.src)
        return json.loads(r.stdout)["number"], version

    def deploy(self, number, detach=False, check=True):
        args = ["--json", "deploy", "--env", "production", "--release", str(number)]
        # Followed to the very end (a blue-green deploy's command returns at
        # the switch otherwise, its warm window running on in the server).
        args.append("--detach" if detach else "--wait")
        return self.run(*args, check=check)

    def show(self, deploy_id):
        return json.loads(self.run("--json", "deploys", "--env", "production", "show", str(deploy_id)).stdout)

    def last_deploy(self):
        return json.loads(self.run("--json", "deploys", "--env", "production").stdout)[0]

    def stop(self):
        self.run("stop", "--env", "production", check=False)
        for p in (self.server, self.proxy):
            p.send_signal(signal.SIGTERM)
        for p in (self.server, self.proxy):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run(["pkill", "-KILL", "-f", os.path.join(self.data, "")], check=False)


def entry(timeline, text):
    for e in timeline:
        if text in e["message"]:
            return e["at"]
    return None


def bench_gantry(tmp):
    g = Gantry(tmp)
    res = {k: [] for k in ("switch", "applied", "mixed", "overhead", "warm_rollback", "auto_decide", "auto_total", "cold_rollback")}
    blue_green = 'strategy = "blue-green"\nrollback_window = "1s"'
    try:
        n, serving = g.release(blue_green)
        g.deploy(n)
        load = Load(g.port)
        wait_for(lambda: len(load.snapshot()) > 200, what="load")
        t_begin = now_ms()
        for i in range(ROUNDS):
            # A blue-green deploy.
            n, v = g.release(blue_green)
            t0 = now_ms()
            g.deploy(n)
            d = g.show(g.last_deploy()["id"])
            tl = d["timeline"]
            time.sleep(0.3)
            recs = load.snapshot()
            live = entry(tl, "live; old set kept warm")
            first_new = first_answer(recs, v, t0)
            old_v = serving
            res["switch"].append(first_new - live if first_new and live else None)
            applied = [re.search(r"applied it ([0-9.]+) ms after the decision", e["message"]) for e in tl]
            applied = [float(m.group(1)) for m in applied if m]
            res["applied"].append(applied[-1] if applied else None)
            last_old = last_answer(recs, old_v, first_new) if first_new else None
            res["mixed"].append(max(0.0, last_old - first_new) if last_old else 0.0)
            start = entry(tl, "start the new instances")
            total = tl[-1]["at"] - d["created_at"]
            boot = (live - start) if live and start else 0
            res["overhead"].append(total - boot - 1000)
            serving = v

            # A warm rollback: a deploy kept warm, rolled back by hand.
            n, v2 = g.release('strategy = "blue-green"\nrollback_window = "60s"')
            out = json.loads(g.deploy(n, detach=True).stdout)
            wait_for(lambda: g.show(out["id"])["phase"] == "warm", what="warm phase")
            time.sleep(0.3)
            t0 = now_ms()
            g.run("rollback", "--env", "production")
            time.sleep(0.3)
            recs = load.snapshot()
            last_new = last_answer(recs, v2, t0)
            res["warm_rollback"].append((last_new - t0) if last_new else 0.0)

            # An automatic rollback: a canary answering 500.
            n, v3 = g.release('strategy = "canary"\nsteps = [{ weight = 20, pause = "60s" }]', 'ERROR_RATE = "1"')
            g.deploy(n, check=False)
            d = g.show(g.last_deploy()["id"])
            time.sleep(0.3)
            recs = load.snapshot()
            bad = f"injected:{v3}"
            decided = entry(d["timeline"], "gate failed")
            first_bad = first_any(recs, bad)
            last_bad = last_answer(recs, bad)
            res["auto_decide"].append(last_bad - decided if last_bad and decided else None)
            res["auto_total"].append(last_bad - first_bad if last_bad and first_bad else None)

        # A cold rollback: the previous release started again.
        t0 = now_ms()
        g.run("rollback", "--env", "production", "--wait")
        res["cold_rollback"].append(now_ms() - t0)
        recs = load.finish()
        res["failed"] = len(failures(recs, t_begin))
        res["requests"] = len(recs)
        res["failed_samples"] = failures(recs, t_begin)[:5]
    finally:
        g.stop()
    return res


def first_any(records, version):
    for sent, _, _, v in records:
        if v == version:
            return sent
    return None


# --- nginx ---------------------------------------------------------------

NGINX_CONF = """
worker_processes {workers};
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    upstream app {{ server 127.0.0.1:{backend}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port} reuseport;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
        }}
    }}
}}
"""


class App:
    def __init__(self, port, version):
        self.port = port
        self.version = version
        env = dict(os.environ, PORT=str(port), APP_VERSION=version, INSTANCE_ID=f"{port}")
        self.p = subprocess.Popen([APP], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: http_ok(port), what=f"app on {port}")

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.p.kill()


def bench_nginx(tmp):
    d = os.path.join(tmp, "nginx")
    os.makedirs(d, exist_ok=True)
    port = PORT_BASE + 1
    conf = os.path.join(d, "nginx.conf")
    ports = [PORT_BASE + 10, PORT_BASE + 11]
    workers = os.cpu_count() or 2

    def write(backend):
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(workers=workers, tmp=d, backend=backend, port=port))

    res = {k: [] for k in ("switch", "mixed", "warm_rollback")}
    n = 0
    apps = []
    cur = App(ports[0], "v0")
    apps.append(cur)
    write(cur.port)
    subprocess.run([NGINX, "-c", conf, "-g", "daemon on;"], check=True)
    wait_for(lambda: http_ok(port, "/"), what="nginx")
    load = Load(port)
    try:
        wait_for(lambda: len(load.snapshot()) > 200, what="load")
        t_begin = now_ms()
        for i in range(ROUNDS):
            # The scripted blue-green switch: start green, wait ready, point
            # nginx at it, reload, keep blue a moment, stop it.
            n += 1
            new = App(ports[n % 2], f"v{n}")
            apps.append(new)
            ready = now_ms()
            write(new.port)
            subprocess.run([NGINX, "-c", conf, "-s", "reload"], check=True, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
            recs = load.snapshot()
            first_new = first_answer(recs, new.version, ready)
            res["switch"].append(first_new - ready if first_new else None)
            last_old = last_answer(recs, cur.version, first_new) if first_new else None
            res["mixed"].append(max(0.0, last_old - first_new) if last_old else 0.0)

            # Rollback while blue is warm: config back, reload.
            t0 = now_ms()
            write(cur.port)
            subprocess.run([NGINX, "-c", conf, "-s", "reload"], check=True, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
            recs = load.snapshot()
            last_new = last_answer(recs, new.version, t0)
            res["warm_rollback"].append((last_new - t0) if last_new else 0.0)
            # And forward again, then retire blue.
            write(new.port)
            subprocess.run([NGINX, "-c", conf, "-s", "reload"], check=True, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
            cur.stop()
            cur = new
        recs = load.finish()
        res["failed"] = len(failures(recs, t_begin))
        res["requests"] = len(recs)
        res["failed_samples"] = failures(recs, t_begin)[:5]
    finally:
        subprocess.run([NGINX, "-c", conf, "-s", "quit"], check=False)
        time.sleep(0.5)
        for app in apps:
            if app.p.poll() is None:
                app.stop()
    return res


def fmt(x, unit="ms"):
    return "-" if x is None else f"{x:.1f} {unit}"


def port_free(port):
    import socket
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def main():
    busy = [p for p in (PORT_BASE, PORT_BASE + 1, PORT_BASE + 10, PORT_BASE + 11) if not port_free(p)]
    if busy:
        raise SystemExit(f"ports {busy} on 127.0.0.1 are in use (a previous run still going?); "
                         f"stop it or pick other ports with PORT_BASE=N")
    tmp = tempfile.mkdtemp(prefix="gantry-bench-deploy-")
    try:
        log(f"nginx-reload blue-green, {ROUNDS} rounds")
        ng = bench_nginx(tmp)
        log(f"gantry blue-green + rollbacks, {ROUNDS} rounds")
        ga = bench_gantry(tmp)
    finally:
        if not os.environ.get("KEEP_TMP"):
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nDeploy benchmark: {ROUNDS} rounds, {CLIENTS} keep-alive clients, medians\n")
    print(f"{'':34}{'gantry':>14}{'nginx reload':>16}")
    rows = [
        ("switch after readiness (seen)", median(ga["switch"]), median(ng["switch"])),
        ("switch applied (control plane)", median(ga["applied"]), None),
        ("mixed old/new window", median(ga["mixed"]), median(ng["mixed"])),
        ("warm rollback (to all-old)", median(ga["warm_rollback"]), median(ng["warm_rollback"])),
        ("auto rollback after decision", median(ga["auto_decide"]), None),
        ("auto rollback, first to last 5xx", median(ga["auto_total"]), None),
        ("deploy overhead (no boot/window)", median(ga["overhead"]), None),
        ("cold rollback (start + switch)", median(ga["cold_rollback"]), None),
    ]
    for name, a, b in rows:
        print(f"{name:34}{fmt(a):>14}{fmt(b):>16}")
    print(f"{'failed requests':34}{ga['failed']:>14}{ng['failed']:>16}")
    print(f"{'requests':34}{ga['requests']:>14}{ng['requests']:>16}")
    for name, r in (("gantry", ga), ("nginx", ng)):
        if r["failed_samples"]:
            print(f"  {name} failures (first): {r['failed_samples']}")
    print("\nper round (ms):")
    for k in ("switch", "mixed", "warm_rollback"):
        print(f"  gantry {k}: {[round(x, 1) if x is not None else None for x in ga[k]]}")
        print(f"  nginx  {k}: {[round(x, 1) if x is not None else None for x in ng[k]]}")
    for k in ("applied", "auto_decide", "auto_total", "overhead"):
        print(f"  gantry {k}: {[round(x, 1) if x is not None else None for x in ga[k]]}")
    goals = [
        ("switch <= 10 ms", (median(ga["switch"]) or 1e9) <= 10),
        ("warm rollback <= 1 s", (median(ga["warm_rollback"]) or 1e9) <= 1000),
        ("0 failed requests", ga["failed"] == 0),
    ]
    print("\ngoals: " + ", ".join(f"{g} {'met' if ok else 'NOT met'}" for g, ok in goals))


if __name__ == "__main__":
    main()
