#!/usr/bin/env python3
"""hello-py: a tiny HTTP/1.1 sample service for Gantry, Python 3 stdlib only.

Endpoints:
  GET /           200 "hello from <APP_VERSION> (instance <INSTANCE_ID>)"
  GET /health     liveness: 200 "ok"
  GET /readiness  200 "ready", or 503 "not ready" before READY_DELAY_MS has
                  passed, with FAIL_READINESS=1, or while draining on SIGTERM
  GET /version    JSON {"version", "instance", "pid", "started_at"} (unix secs)
  GET /slow?ms=N  sleeps N ms (default 1000, at most 600000), then 200

Environment:
  PORT            required; missing or invalid -> message on stderr, exit 2
  HOST            bind address, default 127.0.0.1
  APP_VERSION     default "v1"
  INSTANCE_ID     default "0"
  READY_DELAY_MS  /readiness is 503 until this long after start
  FAIL_READINESS  "1": /readiness always 503

Logs: one JSON line per request on stdout (ts, level, msg="request", method,
path, status, duration_ms, request_id from X-Request-Id or null, version,
instance), plus startup and shutdown lines; errors on stderr.

SIGTERM or SIGINT: stop accepting, let in-flight requests finish (at most
10 s), exit 0.
"""

import json
import os
import signal
import socket
import sys
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

SHUTDOWN_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 30.0


def fail_config(message):
    sys.stderr.write(f"hello-py: configuration error: {message}\n")
    sys.stderr.flush()
    sys.exit(2)


def env_ms(name):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return 0.0
    if not raw.isdigit():
        fail_config(f"{name}={raw!r} is not a non-negative integer")
    return int(raw) / 1000.0


class State:
    def __init__(self):
        port = os.environ.get("PORT", "").strip()
        if not port:
            fail_config("PORT is required (the port to listen on)")
        if not port.isdigit() or not 0 < int(port) < 65536:
            fail_config(f"PORT={port!r} is not a valid port (1-65535)")
        self.port = int(port)
        self.host = os.environ.get("HOST", "").strip() or "127.0.0.1"
        self.version = os.environ.get("APP_VERSION", "").strip() or "v1"
        self.instance = os.environ.get("INSTANCE_ID", "").strip() or "0"
        self.ready_delay = env_ms("READY_DELAY_MS")
        self.fail_readiness = os.environ.get("FAIL_READINESS", "").strip() in ("1", "true")
        self.started = time.monotonic()
        self.started_unix = int(time.time())
        self.draining = threading.Event()
        self.in_flight = 0
        self.cond = threading.Condition()
        self.log_lock = threading.Lock()

    def log(self, level, msg, **fields):
        now = datetime.now(timezone.utc)
        record = {"ts": now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z",
                  "level": level, "msg": msg}
        record.update(fields)
        record["version"] = self.version
        record["instance"] = self.instance
        line = json.dumps(record, separators=(",", ":")) + "\n"
        stream = sys.stderr if level == "error" else sys.stdout
        with self.log_lock:
            try:
                stream.write(line)
                stream.flush()
            except (OSError, ValueError):
                pass  # a closed pipe must not take the app down

    def ready(self):
        return (not self.fail_readiness and not self.draining.is_set()
                and time.monotonic() - self.started >= self.ready_delay)


STATE = None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive by default
    server_version = "hello-py"
    sys_version = ""
    timeout = IDLE_TIMEOUT_S  # idle keep-alive connections are closed after this

    def setup(self):
        super().setup()
        # Headers and body go out in separate writes; without this, Nagle's
        # algorithm and delayed ACKs add ~40 ms to keep-alive requests.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self):
        self.dispatch(head_only=False)

    def do_HEAD(self):
        self.dispatch(head_only=True)

    def do_POST(self):
        self.dispatch(head_only=False, allowed=False)

    do_PUT = do_DELETE = do_PATCH = do_POST

    def dispatch(self, head_only, allowed=True):
        st = STATE
        with st.cond:
            st.in_flight += 1
        start = time.monotonic()
        status = 500
        try:
            # Drain any request body so the connection stays usable.
            length = self.headers.get("Content-Length")
            if length and length.isdigit():
                self.rfile.read(int(length))
            url = urlsplit(self.path)
            if not allowed:
                status, ctype, body = 405, "text/plain; charset=utf-8", "method not allowed\n"
            else:
                status, ctype, body = self.route(st, url)
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-App-Version", st.version)
            self.send_header("X-Instance-Id", st.instance)
            request_id = self.headers.get("X-Request-Id")
            if request_id:
                self.send_header("X-Request-Id", request_id)
            if st.draining.is_set():
                self.send_header("Connection", "close")  # also sets close_connection
            self.end_headers()
            if not head_only:
                self.wfile.write(data)
            self.wfile.flush()
        finally:
            st.log("info", "request", method=self.command, path=urlsplit(self.path).path,
                   status=status, duration_ms=round((time.monotonic() - start) * 1000, 3),
                   request_id=self.headers.get("X-Request-Id"))
            with st.cond:
                st.in_flight -= 1
                st.cond.notify_all()

    def route(self, st, url):
        text = "text/plain; charset=utf-8"
        path = url.path
        if path == "/":
            return 200, text, f"hello from {st.version} (instance {st.instance})\n"
        if path == "/health":
            return 200, text, "ok\n"
        if path == "/readiness":
            return (200, text, "ready\n") if st.ready() else (503, text, "not ready\n")
        if path == "/version":
            body = json.dumps({"version": st.version, "instance": st.instance,
                               "pid": os.getpid(), "started_at": st.started_unix})
            return 200, "application/json", body + "\n"
        if path == "/slow":
            raw = parse_qs(url.query).get("ms", ["1000"])[0]
            ms = min(int(raw), 600_000) if raw.isdigit() else 1000
            time.sleep(ms / 1000.0)
            return 200, text, f"slept {ms} ms\n"
        return 404, text, "not found\n"

    def log_request(self, code="-", size="-"):
        pass  # dispatch() logs each request as JSON

    def log_message(self, format, *args):
        # Reached for protocol errors (malformed requests and the like).
        STATE.log("error", "http error", detail=format % args,
                  client=self.client_address[0] if self.client_address else None)


class Server(ThreadingHTTPServer):
    daemon_threads = True  # idle keep-alive threads must not block exit
    allow_reuse_address = True
    request_queue_size = 128  # the default of 5 drops SYNs under load

    def handle_error(self, request, client_address):
        err = sys.exc_info()[1]
        if isinstance(err, (ConnectionError, TimeoutError)):
            return  # a client going away is routine, not an app error
        STATE.log("error", "unhandled error", error=repr(err), client=client_address[0])


def main():
    global STATE
    STATE = st = State()
    stop = threading.Event()
    received = []

    def on_signal(signum, _frame):
        received.append(signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    st.log("info", "starting", pid=os.getpid(), port=st.port)
    try:
        server = Server((st.host, st.port), Handler)
    except OSError as e:
        st.log("error", "cannot bind", addr=f"{st.host}:{st.port}", error=str(e))
        sys.exit(1)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              daemon=True)
    thread.start()
    st.log("info", "listening", addr=f"{st.host}:{st.port}", pid=os.getpid(),
           ready_delay_ms=int(st.ready_delay * 1000))

    while not stop.wait(0.5):
        pass

    st.draining.set()
    with st.cond:
        in_flight = st.in_flight
    st.log("info", "shutting down", signal=received[0] if received else None, in_flight=in_flight)
    server.shutdown()  # stops the accept loop
    server.socket.close()  # new connections are refused from here on
    deadline = time.monotonic() + SHUTDOWN_TIMEOUT_S
    with st.cond:
        while st.in_flight > 0 and time.monotonic() < deadline:
            st.cond.wait(deadline - time.monotonic())
        left = st.in_flight
    if left:
        st.log("warn", "shutdown timeout, abandoning requests", in_flight=left)
    st.log("info", "shutdown complete", exit_code=0)
    sys.exit(0)


if __name__ == "__main__":
    main()
