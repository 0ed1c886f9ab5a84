#!/usr/bin/env python3
"""Firefox <-> Herald Web Push interoperability driver.

Proves that a real Firefox (Debian `firefox-esr`, headless) can use Herald as
its push service and decrypt messages sent by independent sender libraries:

  * pywebpush (PyPI), aes128gcm, with `Authorization: vapid t=..., k=...`
  * pywebpush, aesgcm, with the draft `Authorization: WebPush <JWT>` +
    `Crypto-Key: p256ecdsa=...` form (py_vapid's Vapid01)
  * pywebpush, empty message (no body)
  * web-push (npm), aes128gcm and aesgcm (its own request, sent over http)
  * `herald push --data ... --vapid-key <PEM>` (Herald's own CLI)

that a message sent while Firefox is closed is delivered when it starts again
(hello with its UAID, same endpoint), and that `PushSubscription.unsubscribe()`
in the page makes the endpoint answer 410 Gone.

Usage:  python3 tests/webpush/driver.py --herald target/release/herald
        [--tls-ca ca.pem --tls-cert server.pem --tls-key server.key]

With the --tls-* files (a test CA and a certificate it signed for localhost
and 127.0.0.1), Herald serves them (`--tls-cert`, `--tls-key`): Firefox's
push server is `wss://` (no allowInsecureServerURL), the endpoints are
`https://`, and every sender trusts only that CA: pywebpush through
REQUESTS_CA_BUNDLE, web-push's request through NODE_EXTRA_CA_CERTS, Firefox
through an enterprise policy (`Certificates.Install`) in a policies.json that
a private mount namespace lays over Firefox's `distribution` directory, so
the installed Firefox is left untouched. `herald push` is left out of that
run: it trusts the public web roots only. Firefox then talks to Herald
directly: the frame-logging proxy cannot read TLS.

Outer mode (the default) installs what is missing -- firefox-esr (apt-get),
the pinned Python packages (requirements.txt, into tests/webpush/.venv) and
the pinned npm packages (package-lock.json, into tests/webpush/node_modules)
-- then re-runs itself with `--inside` in a private network namespace
(`unshare -n`) that has only loopback, so Firefox cannot reach anything but
the Herald, the page server and the logging proxy this script starts in that
namespace (with --tls-*, a private mount namespace too: `unshare -n -m`).

Exit status: 0 every check passed; 1 a check failed (the report says which,
with evidence: Herald's log, the WebSocket frames between Firefox and Herald,
Firefox's console); 2 the environment could not be prepared (install failed,
no network namespace, ...). Never 0 unless Firefox really decrypted the
messages.
"""

import argparse
import base64
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
VENV = os.path.join(HERE, ".venv")
VENV_PY = os.path.join(VENV, "bin", "python")
NODE_MODULES = os.path.join(HERE, "node_modules")

# Fixed ports are fine: the namespace is private to one run.
UA_PORT = 8080        # Herald's UA (WebSocket) listener
AS_PORT = 8081        # Herald's AS (HTTP) listener
ADMIN_PORT = 8082     # Herald's admin listener (/metrics)
PROXY_PORT = 8079     # frame-logging proxy Firefox connects to (-> UA_PORT)
PAGE_PORT = 8000      # the page server (page/, service worker, reports)

EXIT_OK, EXIT_FAIL, EXIT_SETUP = 0, 1, 2


def die_with_parent():
    """preexec_fn: SIGKILL this child when the driver dies, so nothing
    (Firefox, Herald, the namespace) outlives a killed test run."""
    import ctypes
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def log(msg):
    sys.stdout.write("[driver %s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stdout.flush()


def setup_failure(msg):
    log("SETUP FAILED: " + msg)
    sys.exit(EXIT_SETUP)


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def file_sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# ---------------------------------------------------------------------------
# outer mode: install, then re-run inside a network namespace
# ---------------------------------------------------------------------------

def run_install(cmd, what, timeout, env=None):
    log("installing %s: %s" % (what, " ".join(cmd)))
    try:
        p = subprocess.run(cmd, cwd=HERE, env=env, timeout=timeout,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        setup_failure("could not install %s (%s): %s" % (what, " ".join(cmd), e))
    if p.returncode != 0:
        tail = p.stdout.decode(errors="replace")[-3000:]
        setup_failure("could not install %s: `%s` exited %d (no network?):\n%s"
                      % (what, " ".join(cmd), p.returncode, tail))


def find_firefox():
    for name in ("firefox-esr", "firefox"):
        path = shutil.which(name)
        if path:
            return path
    return None


def ensure_firefox():
    path = find_firefox()
    if path:
        return path
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        setup_failure("Firefox is not installed and this script cannot install it "
                      "(needs root and apt-get): install the Debian package firefox-esr")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run_install(["apt-get", "update"], "apt package lists", 600, env)
    run_install(["apt-get", "install", "-y", "--no-install-recommends", "firefox-esr"],
                "firefox-esr", 1200, env)
    path = find_firefox()
    if not path:
        setup_failure("apt-get installed firefox-esr but no firefox-esr command is on PATH")
    return path


def ensure_venv():
    req = os.path.join(HERE, "requirements.txt")
    marker = os.path.join(VENV, ".installed-requirements")
    want = file_sha256(req)
    if os.path.exists(VENV_PY) and os.path.exists(marker):
        with open(marker) as f:
            if f.read().strip() == want:
                return
    if not os.path.exists(VENV_PY):
        probe = subprocess.run([sys.executable, "-m", "venv", "--help"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if probe.returncode != 0 and os.geteuid() == 0 and shutil.which("apt-get"):
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            run_install(["apt-get", "install", "-y", "--no-install-recommends", "python3-venv"],
                        "python3-venv", 600, env)
        run_install([sys.executable, "-m", "venv", VENV], "a Python venv", 300)
    run_install([VENV_PY, "-m", "pip", "install", "--disable-pip-version-check",
                 "-q", "-r", req], "pywebpush (requirements.txt)", 900)
    with open(marker, "w") as f:
        f.write(want + "\n")


def ensure_node():
    if not shutil.which("node") or not shutil.which("npm"):
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            setup_failure("node and npm are needed for the web-push sender and are not installed")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        run_install(["apt-get", "install", "-y", "--no-install-recommends", "nodejs", "npm"],
                    "nodejs and npm", 1200, env)
    lock = os.path.join(HERE, "package-lock.json")
    marker = os.path.join(NODE_MODULES, ".installed-lock")
    want = file_sha256(lock)
    if os.path.exists(marker):
        with open(marker) as f:
            if f.read().strip() == want:
                return
    run_install(["npm", "ci", "--no-audit", "--no-fund"], "web-push (package-lock.json)", 900)
    with open(marker, "w") as f:
        f.write(want + "\n")


def outer(args):
    herald = os.path.abspath(args.herald)
    if not os.access(herald, os.X_OK):
        setup_failure("herald binary %s is missing or not executable "
                      "(cargo build --release -p herald)" % herald)
    # One installer at a time (two test runs on one machine).
    with open(os.path.join(tempfile.gettempdir(), "herald-webpush-install.lock"), "w") as lk:
        fcntl.flock(lk, fcntl.LOCK_EX)
        firefox = ensure_firefox()
        ensure_venv()
        ensure_node()
    log("firefox: %s (%s)" % (firefox, subprocess.run(
        [firefox, "--version"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        env=dict(os.environ, MOZ_HEADLESS="1"), timeout=60).stdout.decode().strip()))

    unshare = shutil.which("unshare")
    if not unshare:
        setup_failure("the unshare command (util-linux) is needed for a private network namespace")
    ns = [unshare, "--net"] if os.geteuid() == 0 else [unshare, "--user", "--map-root-user", "--net"]
    if args.tls_ca:
        # Firefox's policy file is laid over its install in here only
        # (unshare makes the new mounts private: the host never sees them).
        ns.append("--mount")
    probe = subprocess.run(ns + ["true"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if probe.returncode != 0:
        setup_failure("cannot create a network namespace with `%s true`: %s"
                      % (" ".join(ns), probe.stdout.decode(errors="replace").strip()))

    inner = ns + [VENV_PY, os.path.abspath(__file__), "--inside",
                  "--herald", herald, "--firefox", firefox,
                  "--timeout", str(args.timeout)]
    if args.workdir:
        inner += ["--workdir", args.workdir]
    if args.keep:
        inner.append("--keep")
    if args.no_trace:
        inner.append("--no-trace")
    if args.tls_ca:
        inner += ["--tls-ca", os.path.abspath(args.tls_ca), "--tls-cert", os.path.abspath(args.tls_cert),
                  "--tls-key", os.path.abspath(args.tls_key)]
    log("entering a private network namespace: " + " ".join(inner))
    try:
        p = subprocess.run(inner, timeout=args.timeout + 60, preexec_fn=die_with_parent)
    except subprocess.TimeoutExpired:
        log("FAIL: the scenario ran past %d s and was killed" % (args.timeout + 60))
        return EXIT_FAIL
    return p.returncode


# ---------------------------------------------------------------------------
# inside the namespace
# ---------------------------------------------------------------------------

def loopback_up():
    """`ip link set lo up`, with an ioctl so iproute2 is not needed."""
    SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))
    finally:
        s.close()
    others = [name for _, name in socket.if_nameindex() if name != "lo"]
    if others:
        setup_failure("not in a private network namespace: interfaces %s are visible" % others)


def bind_mount(source, target):
    """`mount --bind source target`, with the system call so that the mount
    package is not needed (as loopback_up does without iproute2)."""
    import ctypes
    MS_BIND = 4096
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(source.encode(), target.encode(), None, MS_BIND, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def install_ca_policy(firefox, ca, work):
    """Makes Firefox trust `ca` the way an administrator would: an enterprise
    policy (`Certificates.Install`) in policies.json. Firefox reads it from
    the `distribution` directory beside its binary, or first from
    /etc/firefox/policies/ (Debian's system policies) when that file exists;
    ours is bind-mounted over both in this private mount namespace, so the
    host's install stays as it was."""
    app_dir = os.path.dirname(os.path.realpath(firefox))
    dist = os.path.join(app_dir, "distribution")
    if not os.path.isdir(dist):
        setup_failure("Firefox has no distribution directory at %s to hold the test CA's "
                      "policies.json" % dist)
    ours = os.path.join(work, "distribution")
    # Keep what the package ships there (search plugins), add the policy.
    shutil.copytree(dist, ours, symlinks=True, dirs_exist_ok=True)
    policies = os.path.join(ours, "policies.json")
    with open(policies, "w") as f:
        json.dump({"policies": {"Certificates": {"Install": [ca]}}}, f)
    mounts = [(ours, dist)]
    for etc in ("/etc/firefox", "/etc/firefox-esr"):
        system = os.path.join(etc, "policies", "policies.json")
        if os.path.exists(system):
            mounts.append((policies, system))
    for source, target in mounts:
        try:
            bind_mount(source, target)
        except OSError as e:
            setup_failure("cannot bind-mount %s over %s in the private mount namespace: %s"
                          % (source, target, e))
        log("policies.json (Certificates.Install %s) laid over %s" % (ca, target))


class State:
    """What the page, the service worker and the proxy told us."""

    def __init__(self):
        self.cond = threading.Condition()
        self.go = False
        self.subscription = None
        self.pushes = []          # reports from the service worker
        self.commands = []        # commands queued for the page
        self.results = []         # results of page commands
        self.page_log = []
        self.config = {}

    def wait_for(self, what, predicate, timeout):
        deadline = time.time() + timeout
        with self.cond:
            while True:
                value = predicate()
                if value:
                    return value
                left = deadline - time.time()
                if left <= 0:
                    raise TimeoutError("timed out after %.0f s waiting for %s" % (timeout, what))
                self.cond.wait(min(left, 0.5))


def make_page_server(state):
    page_dir = os.path.join(HERE, "page")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *a):
            pass

        def reply(self, status, body=b"", ctype="application/json"):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            path = self.path.split("?")[0]
            if path == "/config":
                return self.reply(200, json.dumps(state.config).encode())
            if path == "/go":
                with state.cond:
                    go = state.go
                return self.reply(200 if go else 204)
            if path == "/command":
                with state.cond:
                    cmd = state.commands.pop(0) if state.commands else {"cmd": "wait"}
                return self.reply(200, json.dumps(cmd).encode())
            files = {"/": ("index.html", "text/html"),
                     "/index.html": ("index.html", "text/html"),
                     "/page.js": ("page.js", "text/javascript"),
                     "/sw.js": ("sw.js", "text/javascript")}
            if path in files:
                name, ctype = files[path]
                with open(os.path.join(page_dir, name), "rb") as f:
                    return self.reply(200, f.read(), ctype + "; charset=utf-8")
            return self.reply(404, b"not found", "text/plain")

        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n)
            path = self.path.split("?")[0]
            with state.cond:
                if path == "/log":
                    line = body.decode(errors="replace")
                    state.page_log.append(line)
                    log(line)
                elif path == "/subscription":
                    state.subscription = json.loads(body)
                elif path == "/push":
                    report = json.loads(body)
                    state.pushes.append(report)
                    log("service worker push event: %s" % json.dumps(report))
                elif path == "/result":
                    state.results.append(json.loads(body))
                else:
                    return self.reply(404, b"{}")
                state.cond.notify_all()
            return self.reply(200, b"{}")

    server = ThreadingHTTPServer(("127.0.0.1", PAGE_PORT), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class FrameLog:
    """Transparent TCP proxy Firefox -> Herald's UA port that forwards bytes
    unchanged and writes the HTTP upgrade and every WebSocket frame (decoded,
    inflated when permessage-deflate is on) to a log file: the evidence when
    something goes wrong between Firefox and Herald."""

    def __init__(self, path, state):
        self.path = path
        self.state = state
        self.lock = threading.Lock()
        self.file = open(path, "a", buffering=1)
        self.hellos = 0
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", PROXY_PORT))
        self.listener.listen(16)
        threading.Thread(target=self.accept_loop, daemon=True).start()

    def write(self, conn, direction, text):
        with self.lock:
            self.file.write("%s conn%d %s %s\n" % (time.strftime("%H:%M:%S"), conn, direction, text))

    def accept_loop(self):
        n = 0
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            n += 1
            try:
                upstream = socket.create_connection(("127.0.0.1", UA_PORT), timeout=5)
                upstream.settimeout(None)
            except OSError as e:
                self.write(n, "--", "cannot connect to Herald: %s" % e)
                client.close()
                continue
            self.write(n, "--", "connection opened")
            shared = {"deflate": False}
            threading.Thread(target=self.pump, args=(n, client, upstream, "FF>H", shared), daemon=True).start()
            threading.Thread(target=self.pump, args=(n, upstream, client, "H>FF", shared), daemon=True).start()

    def pump(self, conn, src, dst, direction, shared):
        buf = b""
        head_done = False
        inflater = zlib.decompressobj(-15)
        frag = []
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                self.write(conn, direction, "EOF")
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            try:
                dst.sendall(data)
            except OSError:
                pass
            buf += data
            try:
                if not head_done:
                    i = buf.find(b"\r\n\r\n")
                    if i < 0:
                        continue
                    head = buf[:i].decode(errors="replace")
                    self.write(conn, direction, "HTTP head:\n    " + head.replace("\r\n", "\n    "))
                    if direction == "H>FF" and "permessage-deflate" in head.lower():
                        shared["deflate"] = True
                    buf = buf[i + 4:]
                    head_done = True
                while True:
                    frame = self.parse_frame(buf)
                    if frame is None:
                        break
                    fin, rsv1, opcode, payload, used = frame
                    buf = buf[used:]
                    self.log_frame(conn, direction, fin, rsv1, opcode, payload, inflater, frag)
            except Exception as e:  # logging must never break the relay
                self.write(conn, direction, "frame log error: %r" % e)
                buf = b""

    @staticmethod
    def parse_frame(buf):
        if len(buf) < 2:
            return None
        b0, b1 = buf[0], buf[1]
        fin, rsv1, opcode = bool(b0 & 0x80), bool(b0 & 0x40), b0 & 0x0F
        masked, length = bool(b1 & 0x80), b1 & 0x7F
        pos = 2
        if length == 126:
            if len(buf) < 4:
                return None
            length = struct.unpack(">H", buf[2:4])[0]
            pos = 4
        elif length == 127:
            if len(buf) < 10:
                return None
            length = struct.unpack(">Q", buf[2:10])[0]
            pos = 10
        mask = b""
        if masked:
            if len(buf) < pos + 4:
                return None
            mask = buf[pos:pos + 4]
            pos += 4
        if len(buf) < pos + length:
            return None
        payload = buf[pos:pos + length]
        if masked:
            payload = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
        return fin, rsv1, opcode, payload, pos + length

    def log_frame(self, conn, direction, fin, rsv1, opcode, payload, inflater, frag):
        names = {0: "cont", 1: "text", 2: "binary", 8: "close", 9: "ping", 10: "pong"}
        if opcode in (0, 1, 2):
            frag.append((rsv1, payload))
            if not fin:
                return
            compressed = frag[0][0]
            data = b"".join(p for _, p in frag)
            frag.clear()
            if compressed:
                data = inflater.decompress(data + b"\x00\x00\xff\xff")
            text = data.decode(errors="replace")
            self.write(conn, direction, "%s%s %s" % (names.get(opcode, opcode),
                                                     " (deflated)" if compressed else "", text))
            if direction == "FF>H" and '"hello"' in text:
                with self.state.cond:
                    self.hellos += 1
                    self.state.cond.notify_all()
        elif opcode == 8:
            code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else None
            self.write(conn, direction, "close code=%s reason=%r" % (code, payload[2:].decode(errors="replace")))
        else:
            self.write(conn, direction, "%s %r" % (names.get(opcode, opcode), payload[:64]))


def user_js(ua_url):
    prefs = {
        # Herald as the push service; a ws:// one needs the testing pref, a
        # wss:// one is what production uses and goes without it.
        "dom.push.serverURL": ua_url,
        "dom.push.testing.allowInsecureServerURL": ua_url.startswith("ws://"),
        "dom.push.enabled": True,
        "dom.push.connection.enabled": True,
        "dom.push.loglevel": "debug",
        "dom.push.maxQuotaPerSubscription": 1000,
        "dom.serviceWorkers.enabled": True,
        "dom.serviceWorkers.testing.enabled": True,
        "permissions.default.desktop-notification": 1,
        # Console output on stdout (the page's and the push service's logs).
        "devtools.console.stdout.content": True,
        "devtools.console.stdout.chrome": True,
        "browser.dom.window.dump.enabled": True,
        # Loopback is the only network: do not go offline because of that.
        "network.manage-offline-status": False,
        "network.connectivity-service.enabled": False,
        "network.captive-portal-service.enabled": False,
        "network.dns.disablePrefetch": True,
        "network.prefetch-next": False,
        "network.predictor.enabled": False,
        "network.http.speculative-parallel-limit": 0,
        "network.trr.mode": 5,
        # No phoning home.
        "app.update.auto": False,
        "app.update.enabled": False,
        "app.update.disabledForTesting": True,
        "app.normandy.enabled": False,
        "app.shield.optoutstudies.enabled": False,
        "browser.shell.checkDefaultBrowser": False,
        "browser.startup.homepage_override.mstone": "ignore",
        "browser.aboutwelcome.enabled": False,
        "browser.newtabpage.enabled": False,
        "browser.newtabpage.activity-stream.feeds.telemetry": False,
        "browser.newtabpage.activity-stream.telemetry": False,
        "browser.newtabpage.activity-stream.feeds.topsites": False,
        "browser.newtabpage.activity-stream.feeds.section.topstories": False,
        "browser.ping-centre.telemetry": False,
        "browser.safebrowsing.malware.enabled": False,
        "browser.safebrowsing.phishing.enabled": False,
        "browser.safebrowsing.downloads.enabled": False,
        "browser.safebrowsing.downloads.remote.enabled": False,
        "browser.safebrowsing.blockedURIs.enabled": False,
        "browser.safebrowsing.update.enabled": False,
        "browser.safebrowsing.provider.mozilla.updateURL": "",
        "browser.safebrowsing.provider.google4.updateURL": "",
        "browser.search.update": False,
        "browser.region.update.enabled": False,
        "browser.region.network.url": "",
        "browser.sessionstore.resume_from_crash": False,
        "browser.startup.page": 0,
        "browser.tabs.warnOnClose": False,
        "datareporting.policy.dataSubmissionEnabled": False,
        "datareporting.healthreport.uploadEnabled": False,
        "toolkit.telemetry.enabled": False,
        "toolkit.telemetry.unified": False,
        "toolkit.telemetry.server": "",
        "toolkit.telemetry.archive.enabled": False,
        "toolkit.startup.max_resumed_crashes": -1,
        "extensions.update.enabled": False,
        "extensions.getAddons.cache.enabled": False,
        "extensions.blocklist.enabled": False,
        "services.settings.server": "http://127.0.0.1:9/v1",
        "geo.enabled": False,
        "media.gmp-manager.updateEnabled": False,
        "identity.fxaccounts.enabled": False,
        "messaging-system.rsexperimentloader.enabled": False,
        "browser.contentblocking.report.lockwise.enabled": False,
    }
    return "".join("user_pref(%s, %s);\n" % (json.dumps(k), json.dumps(v)) for k, v in prefs.items())


def herald_metric(name):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % ADMIN_PORT, timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        parts = line.rsplit(" ", 1)
        if len(parts) == 2 and parts[0].split("{")[0] == name:
            try:
                total += float(parts[1])
            except ValueError:
                pass
    return total


def tail(path, n=60):
    try:
        with open(path, errors="replace") as f:
            lines = f.readlines()
    except OSError as e:
        return "(cannot read %s: %s)" % (path, e)
    return "".join(lines[-n:])


class Scenario:
    def __init__(self, args):
        self.args = args
        self.work = args.workdir or tempfile.mkdtemp(prefix="herald-firefox-")
        os.makedirs(self.work, exist_ok=True)
        self.state = State()
        self.procs = []
        self.results = []   # (name, ok, detail)
        self.frames = None
        self.tls = args.tls_ca is not None
        self.ua_scheme, self.as_scheme = ("wss", "https") if self.tls else ("ws", "http")

    # -- helpers ----------------------------------------------------------

    def check(self, name, ok, detail=""):
        self.results.append((name, bool(ok), detail))
        log("%s: %s%s" % ("PASS" if ok else "FAIL", name, (" -- " + detail) if detail else ""))
        return ok

    def spawn(self, name, cmd, env=None):
        out = open(os.path.join(self.work, name + ".log"), "ab")
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                             env=env, start_new_session=True, cwd=self.work,
                             preexec_fn=die_with_parent)
        self.procs.append((name, p))
        return p

    def stop_all(self):
        for name, p in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except OSError:
                    pass
        for name, p in reversed(self.procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except OSError:
                    pass
                p.wait()

    # -- steps ------------------------------------------------------------

    def make_vapid(self):
        from cryptography.hazmat.primitives import serialization
        from py_vapid import Vapid02
        v = Vapid02()
        v.generate_keys()
        self.vapid_pem = os.path.join(self.work, "vapid-private.pem")
        v.save_key(self.vapid_pem)
        raw_private = v.private_key.private_numbers().private_value.to_bytes(32, "big")
        raw_public = v.public_key.public_bytes(serialization.Encoding.X962,
                                               serialization.PublicFormat.UncompressedPoint)
        self.vapid_private_b64 = b64url(raw_private)
        self.vapid_public_b64 = b64url(raw_public)
        self.subject = "mailto:webpush-test@localhost"
        self.state.config = {"applicationServerKey": self.vapid_public_b64}

    def start_herald(self):
        data = os.path.join(self.work, "herald-data")
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "debug"))
        tls = ["--tls-cert", self.args.tls_cert, "--tls-key", self.args.tls_key] if self.tls else []
        self.herald = self.spawn("herald", [
            self.args.herald, "serve", "--data-dir", data,
            "--ua-listen", "127.0.0.1:%d" % UA_PORT, "--as-listen", "127.0.0.1:%d" % AS_PORT,
            "--admin-listen", "127.0.0.1:%d" % ADMIN_PORT, "--shards", "2"] + tls, env)
        health = "%s://127.0.0.1:%d/health" % (self.as_scheme, AS_PORT)
        # A readiness probe only, so it does not judge the certificate:
        # whether it is trusted is for Firefox and the senders to say.
        probe_tls = None
        if self.tls:
            probe_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            probe_tls.check_hostname = False
            probe_tls.verify_mode = ssl.CERT_NONE
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.herald.poll() is not None:
                setup_failure("herald exited at startup:\n" + tail(os.path.join(self.work, "herald.log")))
            try:
                with urllib.request.urlopen(health, timeout=2, context=probe_tls) as r:
                    if r.status == 200:
                        log("herald is up (UA %s://127.0.0.1:%d, AS %s://127.0.0.1:%d)"
                            % (self.ua_scheme, UA_PORT, self.as_scheme, AS_PORT))
                        return
            except OSError:
                pass
            time.sleep(0.1)
        setup_failure("herald /health not 200 within 20 s:\n" + tail(os.path.join(self.work, "herald.log")))

    def start_firefox(self):
        profile = os.path.join(self.work, "profile")
        home = os.path.join(self.work, "home")
        os.makedirs(profile, exist_ok=True)
        os.makedirs(home, exist_ok=True)
        port = PROXY_PORT if self.frames is not None else UA_PORT
        ua_url = "%s://127.0.0.1:%d/" % (self.ua_scheme, port)
        with open(os.path.join(profile, "user.js"), "w") as f:
            f.write(user_js(ua_url))
        env = dict(os.environ, HOME=home, MOZ_HEADLESS="1", MOZ_CRASHREPORTER_DISABLE="1",
                   MOZ_DISABLE_AUTO_SAFE_MODE="1", MOZ_REMOTE_SETTINGS_DEVTOOLS="1", XDG_CACHE_HOME=os.path.join(home, ".cache"))
        env.pop("DISPLAY", None)
        url = "http://127.0.0.1:%d/" % PAGE_PORT
        log("starting Firefox (push server %s) on %s" % (ua_url, url))
        self.firefox = self.spawn("firefox", [self.args.firefox, "--headless", "--no-remote",
                                              "--profile", profile, url], env)

    def wait_for_push_client(self, hellos_before=0):
        """Waits until Firefox's push client has said hello to Herald: a
        subscribe() made before that hangs. The frame-logging proxy counts the
        hellos. Without it (--no-trace), Herald's /metrics is only a hint
        (its gauges were seen to flap between requests), so after a bounded
        wait the page's own subscribe retries take over."""
        t0 = time.time()
        deadline = t0 + 90
        while time.time() < deadline:
            if self.firefox.poll() is not None:
                raise RuntimeError("Firefox exited (%s) before connecting to Herald" % self.firefox.returncode)
            if self.frames is not None:
                with self.state.cond:
                    if self.frames.hellos > hellos_before:
                        log("Herald has seen Firefox's hello (frame log)")
                        return
            else:
                if (herald_metric("herald_connections") or 0) >= 1:
                    log("Herald reports a UA connection (/metrics)")
                    return
                if time.time() - t0 > 10:
                    log("no hello seen in /metrics after 10 s; relying on the page's subscribe() retries")
                    return
            time.sleep(0.25)
        raise TimeoutError("Firefox's push client did not complete a hello with Herald within 90 s")

    def wait_for_herald_to_see_close(self):
        """Without the frame log, the restarted Firefox's hello is seen as
        herald_connections going from 0 to 1: wait (bounded) until Herald has
        closed the stopped Firefox's socket. Should the gauge not get there,
        the page's own subscribe() retries take over, as in
        wait_for_push_client."""
        deadline = time.time() + 20
        while time.time() < deadline:
            if herald_metric("herald_connections") == 0:
                log("Herald has closed the stopped Firefox's connection (/metrics)")
                return
            time.sleep(0.1)
        log("herald_connections did not reach 0 within 20 s; relying on the page's subscribe() retries")

    def sub_info(self):
        s = self.state.subscription
        return {"endpoint": s["endpoint"], "keys": {"p256dh": s["keys"]["p256dh"], "auth": s["keys"]["auth"]}}

    def pywebpush_send(self, data, encoding, draft_vapid):
        from py_vapid import Vapid01, Vapid02
        from pywebpush import WebPushException, webpush
        key = (Vapid01 if draft_vapid else Vapid02).from_file(self.vapid_pem)
        try:
            r = webpush(self.sub_info(), data=data, vapid_private_key=key,
                        vapid_claims={"sub": self.subject}, content_encoding=encoding,
                        ttl=60, timeout=15)
        except WebPushException as e:
            r = e.response
            if r is None:
                return None, "no response: %s" % e
        sent = {k: v for k, v in r.request.headers.items()
                if k.lower() in ("authorization", "crypto-key", "content-encoding", "encryption", "ttl")}
        return r.status_code, "HTTP %d %s; sent %s" % (r.status_code, r.text.strip()[:200], json.dumps(sent)[:400])

    def webpush_js_send(self, data, encoding):
        req = {"subscription": self.sub_info(), "payload": data, "contentEncoding": encoding, "ttl": 60,
               "vapid": {"subject": self.subject, "publicKey": self.vapid_public_b64,
                         "privateKey": self.vapid_private_b64}}
        env = dict(os.environ, NODE_EXTRA_CA_CERTS=self.args.tls_ca) if self.tls else None
        p = subprocess.run(["node", os.path.join(HERE, "send_webpush.js")], input=json.dumps(req).encode(),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60, cwd=HERE, env=env)
        if p.returncode != 0:
            return None, "send_webpush.js failed: " + p.stderr.decode(errors="replace")[-1500:]
        out = json.loads(p.stdout)
        sent = {k: v for k, v in out["sent"]["headers"].items()
                if k.lower() in ("authorization", "crypto-key", "content-encoding", "encryption", "ttl")}
        return out["status"], "HTTP %d %s; sent %s" % (out["status"], out["body"].strip()[:200], json.dumps(sent)[:400])

    def herald_push_send(self, data):
        s = self.sub_info()
        cmd = [self.args.herald, "push", s["endpoint"], "--data", data, "--p256dh", s["keys"]["p256dh"],
               "--auth", s["keys"]["auth"], "--vapid-key", self.vapid_pem, "--subject", self.subject]
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        out = p.stdout.decode(errors="replace").strip()
        status = None
        try:
            status = int(out.split()[0])
        except (IndexError, ValueError):
            pass
        return status, "exit %d: %s" % (p.returncode, out.replace("\n", " | ")[:300])

    def send_and_expect(self, name, send, expect_data):
        """Sends one message and waits for the service worker's report of it."""
        before = len(self.state.pushes)
        try:
            status, detail = send()
        except Exception as e:
            self.check(name, False, "sender raised %r\n%s" % (e, traceback.format_exc()))
            return
        if status != 201:
            self.check(name, False, "expected HTTP 201 from Herald: " + detail)
            return

        def arrived():
            with_data = [p for p in self.state.pushes[before:]
                         if (p.get("text") == expect_data if expect_data is not None else not p.get("hasData"))]
            return with_data or None
        try:
            got = self.state.wait_for("the service worker to report %r" % (expect_data,), arrived, 30)
            self.check(name, True, "Firefox's service worker got %s (%s)" % (json.dumps(got[0]), detail))
        except TimeoutError as e:
            others = self.state.pushes[before:]
            self.check(name, False, "%s; other push events since: %s; %s" % (e, json.dumps(others), detail))

    def stop_firefox(self):
        try:
            os.killpg(self.firefox.pid, signal.SIGTERM)
        except OSError:
            pass
        try:
            self.firefox.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.firefox.pid, signal.SIGKILL)
            self.firefox.wait()
        self.procs = [(n, p) for n, p in self.procs if p is not self.firefox]

    def restart_firefox_with_pending_message(self):
        """Firefox closed, a message sent (Herald stores it), Firefox started
        again on the same profile: its hello carries the UAID, Herald delivers
        the stored message, the subscription (endpoint) is unchanged."""
        name = "message stored while Firefox is closed, delivered after restart"
        old_endpoint = self.state.subscription["endpoint"]
        t0 = time.time()
        self.stop_firefox()
        log("Firefox stopped (%.1f s)" % (time.time() - t0))
        if self.frames is None:
            self.wait_for_herald_to_see_close()
        # Firefox's socket is closed (the frame log shows its EOF). Should
        # Herald not have noticed yet, the message goes unacked to the dead
        # socket and must be re-sent on the next connection (SPEC 3.4):
        # either way the restarted Firefox has to receive it.
        status, detail = self.pywebpush_send("sent while Firefox was closed", "aes128gcm", False)
        if status != 201:
            self.check(name, False, "expected HTTP 201 from Herald: " + detail)
            return
        with self.state.cond:
            before = len(self.state.pushes)
            hellos_before = self.frames.hellos if self.frames is not None else 0
            self.state.subscription = None
            # The reloaded page must not subscribe before the push client is
            # connected (such a subscribe() hangs): hold it until Herald has
            # seen the new hello.
            self.state.go = False
        self.start_firefox()
        try:
            self.wait_for_push_client(hellos_before)
            with self.state.cond:
                self.state.go = True
                self.state.cond.notify_all()
            got = self.state.wait_for(
                "the restarted Firefox's service worker to report the stored message",
                lambda: [p for p in self.state.pushes[before:] if p.get("text") == "sent while Firefox was closed"],
                90)
            sub = self.state.wait_for("the reloaded page to post its subscription",
                                      lambda: self.state.subscription, 60)
        except (TimeoutError, RuntimeError) as e:
            self.check(name, False, str(e))
            return
        self.check(name, sub.get("endpoint") == old_endpoint,
                   "got %s; endpoint %s" % (json.dumps(got[0]),
                                            "unchanged" if sub.get("endpoint") == old_endpoint
                                            else "CHANGED to %s" % sub.get("endpoint")))

    def run(self):
        self.make_vapid()
        if self.tls:
            install_ca_policy(self.args.firefox, self.args.tls_ca, self.work)
            # requests (pywebpush's HTTP client) trusts this bundle only.
            os.environ["REQUESTS_CA_BUNDLE"] = self.args.tls_ca
        self.start_herald()
        if self.tls:
            log("TLS: Firefox connects to Herald directly (the frame-logging proxy cannot read TLS)")
        elif not self.args.no_trace:
            self.frames = FrameLog(os.path.join(self.work, "ws-frames.log"), self.state)
        make_page_server(self.state)
        self.start_firefox()

        t0 = time.time()
        self.wait_for_push_client()
        log("push client connected %.1f s after Firefox started" % (time.time() - t0))
        with self.state.cond:
            self.state.go = True
            self.state.cond.notify_all()
        sub = self.state.wait_for("the page to post its subscription", lambda: self.state.subscription, 90)
        if "error" in sub:
            self.check("subscribe", False, "pushManager.subscribe() failed in Firefox: %s" % sub["error"])
            return
        endpoint = sub.get("endpoint", "")
        prefix = "%s://127.0.0.1:%d/wpush/v2/" % (self.as_scheme, AS_PORT)
        if not self.check("subscribe (applicationServerKey -> VAPID v2 endpoint)",
                          endpoint.startswith(prefix) and sub.get("keys", {}).get("p256dh") and sub["keys"].get("auth"),
                          "subscription %s" % json.dumps(sub)):
            return

        self.send_and_expect("pywebpush aes128gcm (vapid t=,k=)",
                             lambda: self.pywebpush_send("hello from pywebpush aes128gcm", "aes128gcm", False),
                             "hello from pywebpush aes128gcm")
        self.send_and_expect("pywebpush aesgcm (WebPush JWT + Crypto-Key p256ecdsa)",
                             lambda: self.pywebpush_send("hello from pywebpush aesgcm", "aesgcm", True),
                             "hello from pywebpush aesgcm")
        self.send_and_expect("pywebpush empty push",
                             lambda: self.pywebpush_send(None, "aes128gcm", False), None)
        self.send_and_expect("web-push (npm) aes128gcm",
                             lambda: self.webpush_js_send("hello from web-push aes128gcm \u2713", "aes128gcm"),
                             "hello from web-push aes128gcm \u2713")
        self.send_and_expect("web-push (npm) aesgcm",
                             lambda: self.webpush_js_send("hello from web-push aesgcm", "aesgcm"),
                             "hello from web-push aesgcm")
        if not self.tls:
            self.send_and_expect("herald push --data (aes128gcm, VAPID from PEM)",
                                 lambda: self.herald_push_send("hello from herald push"),
                                 "hello from herald push")

        self.restart_firefox_with_pending_message()

        # unsubscribe() in the page -> the endpoint answers 410.
        with self.state.cond:
            self.state.commands.append({"cmd": "unsubscribe"})
        try:
            res = self.state.wait_for("the page's unsubscribe() result",
                                      lambda: [r for r in self.state.results if r.get("cmd") == "unsubscribe"], 30)[0]
        except TimeoutError as e:
            self.check("unsubscribe() in Firefox", False, str(e))
            return
        if not self.check("unsubscribe() in Firefox", res.get("ok") is True and res.get("subscriptionAfter") is None,
                          json.dumps(res)):
            return
        deadline = time.time() + 15
        last = None
        while time.time() < deadline:
            status, detail = self.pywebpush_send("after unsubscribe", "aes128gcm", False)
            last = detail
            if status == 410:
                break
            time.sleep(0.3)
        self.check("endpoint answers 410 after unsubscribe()", status == 410, last)
        with self.state.cond:
            self.state.commands.append({"cmd": "exit"})

    def report(self):
        failed = [r for r in self.results if not r[1]]
        log("=" * 70)
        log("RESULTS (work dir %s)" % self.work)
        for name, ok, detail in self.results:
            log("  %s  %s" % ("PASS" if ok else "FAIL", name))
        if failed or not self.results:
            log("-" * 70)
            log("evidence: Herald log tail:\n" + tail(os.path.join(self.work, "herald.log"), 80))
            if self.frames:
                log("evidence: WebSocket frames Firefox <-> Herald:\n"
                    + tail(os.path.join(self.work, "ws-frames.log"), 120))
            log("evidence: Firefox output (push service lines and errors):\n" + "".join(
                l for l in tail(os.path.join(self.work, "firefox.log"), 4000).splitlines(True)
                if any(w in l for w in ("Push", "push", "rror", "ServiceWorker", "page:")))[-12000:])
        return EXIT_OK if self.results and not failed else EXIT_FAIL


def inside(args):
    loopback_up()
    sc = Scenario(args)
    log("work dir %s" % sc.work)
    code = EXIT_FAIL

    def on_alarm(*_):
        raise TimeoutError("the scenario ran past --timeout %d s" % args.timeout)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(args.timeout)
    try:
        sc.run()
        code = sc.report()
    except SystemExit as e:
        code = e.code
        sc.report()
    except Exception as e:
        sc.check("scenario", False, "%s\n%s" % (e, traceback.format_exc()))
        code = sc.report()
    finally:
        signal.alarm(0)
        sc.stop_all()
    if code == EXIT_OK and not args.keep:
        shutil.rmtree(sc.work, ignore_errors=True)
    else:
        log("work dir kept: %s (herald.log, firefox.log, ws-frames.log, profile/)" % sc.work)
    log("exit %d" % code)
    return code


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--herald", required=True, help="path of the herald binary")
    ap.add_argument("--firefox", help=argparse.SUPPRESS)
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help="keep logs and the profile here (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir even on success")
    ap.add_argument("--no-trace", action="store_true",
                    help="connect Firefox to Herald directly, without the frame-logging proxy")
    ap.add_argument("--timeout", type=int, default=300, help="deadline for the whole scenario (s)")
    ap.add_argument("--tls-ca", help="CA certificate (PEM) that Firefox and the senders trust; "
                    "with --tls-cert and --tls-key, the run is over wss:// and https://")
    ap.add_argument("--tls-cert", help="Herald's certificate (PEM), signed by --tls-ca")
    ap.add_argument("--tls-key", help="Herald's private key (PEM)")
    args = ap.parse_args()
    tls = [args.tls_ca, args.tls_cert, args.tls_key]
    if any(tls) and not all(tls):
        ap.error("--tls-ca, --tls-cert and --tls-key go together")
    if args.inside:
        sys.exit(inside(args))
    sys.exit(outer(args))


if __name__ == "__main__":
    main()
