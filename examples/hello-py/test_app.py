"""Self-test for hello-py: starts app.py on a free port and talks HTTP to it.

Run: python3 -m unittest discover -s examples/hello-py
"""

import http.client
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest

APP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "app.py")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningApp:
    def __init__(self, **env):
        self.port = free_port()
        full_env = {"PATH": os.environ.get("PATH", ""), "PORT": str(self.port)}
        full_env.update(env)
        self.proc = subprocess.Popen([sys.executable, APP], env=full_env,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     stdin=subprocess.DEVNULL, text=True)
        self.lines = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("app did not start listening")
                time.sleep(0.02)

    def _pump(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def conn(self):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)

    def get(self, path, headers=None):
        c = self.conn()
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        body = r.read().decode()
        c.close()
        return r, body

    def log_line(self, *needles):
        deadline = time.monotonic() + 10
        while True:
            line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            if all(n in line for n in needles):
                return json.loads(line)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()


class HelloPyTest(unittest.TestCase):
    def start(self, **env):
        app = RunningApp(**env)
        self.addCleanup(app.stop)
        return app

    def test_endpoints(self):
        app = self.start(APP_VERSION="v5", INSTANCE_ID="2")
        r, body = app.get("/")
        self.assertEqual((r.status, body), (200, "hello from v5 (instance 2)\n"))
        self.assertEqual(r.getheader("Content-Length"), str(len(body)))
        r, body = app.get("/health")
        self.assertEqual((r.status, body), (200, "ok\n"))
        r, body = app.get("/readiness")
        self.assertEqual((r.status, body), (200, "ready\n"))
        r, body = app.get("/version")
        self.assertEqual(r.status, 200)
        v = json.loads(body)
        self.assertEqual((v["version"], v["instance"], v["pid"]), ("v5", "2", app.proc.pid))
        self.assertIsInstance(v["started_at"], int)
        r, _ = app.get("/nope")
        self.assertEqual(r.status, 404)

    def test_keep_alive(self):
        app = self.start()
        c = app.conn()
        for _ in range(5):
            c.request("GET", "/health")
            r = c.getresponse()
            self.assertEqual(r.read(), b"ok\n")
        sock = c.sock
        c.request("GET", "/")
        c.getresponse().read()
        self.assertIs(c.sock, sock, "same connection reused")
        c.close()

    def test_readiness_delay(self):
        app = self.start(READY_DELAY_MS="600")
        r, _ = app.get("/readiness")
        self.assertEqual(r.status, 503)
        time.sleep(0.8)
        r, _ = app.get("/readiness")
        self.assertEqual(r.status, 200)

    def test_json_log_with_request_id(self):
        app = self.start(APP_VERSION="v3")
        app.get("/health", {"X-Request-Id": "py-req-42"})
        rec = app.log_line("py-req-42")
        self.assertEqual(rec["msg"], "request")
        self.assertEqual(rec["level"], "info")
        self.assertEqual((rec["method"], rec["path"], rec["status"]), ("GET", "/health", 200))
        self.assertEqual(rec["request_id"], "py-req-42")
        self.assertEqual(rec["version"], "v3")
        self.assertIn("duration_ms", rec)
        self.assertIn("ts", rec)

    def test_sigterm_drains_and_exits_0(self):
        app = self.start()
        result = {}

        def slow():
            r, body = app.get("/slow?ms=1200")
            result["resp"] = (r.status, body)

        t = threading.Thread(target=slow)
        t.start()
        time.sleep(0.3)
        os.kill(app.proc.pid, signal.SIGTERM)
        t.join(10)
        self.assertEqual(result.get("resp"), (200, "slept 1200 ms\n"))
        self.assertEqual(app.proc.wait(timeout=10), 0)

    def test_missing_port_exits_2(self):
        proc = subprocess.run([sys.executable, APP], env={"PATH": os.environ.get("PATH", "")},
                              capture_output=True, text=True, timeout=10)
        self.assertEqual(proc.returncode, 2)
        self.assertIn("PORT", proc.stderr)


if __name__ == "__main__":
    unittest.main()
