#!/usr/bin/env python3
"""Idle memory per UA, wss:// against ws://: starts herald (1 shard) once
plain and once with a throwaway self-signed certificate, connects N UAs
that each upgrade, say hello and register one channel, then stay idle, and
prints the server's RSS growth per UA for each.

    python3 bench/tls_idle.py [--uas 4000] [--herald target/release/herald]

Needs openssl (the certificate) and Python's ssl module; loopback only.
"""
import argparse, base64, json, os, socket, ssl, subprocess, sys, tempfile, time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def frame(text):
    """One masked client text frame."""
    payload = text.encode()
    mask = os.urandom(4)
    head = bytes([0x81])
    n = len(payload)
    head += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def read_until(sock, marker, buf=b""):
    while marker not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError("closed")
        buf += chunk
    return buf


def read_message(sock, buf):
    """The next server text frame's payload (unmasked, small)."""
    while True:
        if len(buf) >= 2:
            n = buf[1] & 0x7F
            start = 2
            if n == 126:
                if len(buf) < 4:
                    buf += sock.recv(4096)
                    continue
                n = int.from_bytes(buf[2:4], "big")
                start = 4
            if len(buf) >= start + n:
                return buf[start : start + n], buf[start + n :]
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError("closed")
        buf += chunk


def ua(port, context):
    sock = socket.create_connection(("127.0.0.1", port))
    if context:
        sock = context.wrap_socket(sock, server_hostname="localhost")
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: push-notification\r\n\r\n"
        ).encode()
    )
    buf = read_until(sock, b"\r\n\r\n")
    buf = buf[buf.index(b"\r\n\r\n") + 4 :]
    sock.sendall(frame(json.dumps({"messageType": "hello", "use_webpush": True})))
    _, buf = read_message(sock, buf)
    channel = "%08x-0000-4000-8000-%012x" % (int.from_bytes(os.urandom(4), "big"), int.from_bytes(os.urandom(6), "big"))
    sock.sendall(frame(json.dumps({"messageType": "register", "channelID": channel})))
    reply, _ = read_message(sock, buf)
    assert json.loads(reply)["status"] == 200, reply
    return sock


def measure(herald, uas, tls_files):
    work = tempfile.mkdtemp(prefix="tls-idle-")
    ports = [free_port() for _ in range(3)]
    args = [herald, "serve", "--data-dir", f"{work}/data", "--shards", "1",
            "--ua-listen", f"127.0.0.1:{ports[0]}", "--as-listen", f"127.0.0.1:{ports[1]}",
            "--admin-listen", f"127.0.0.1:{ports[2]}"]
    context = None
    if tls_files:
        args += ["--tls-cert", tls_files[0], "--tls-key", tls_files[1]]
        context = ssl.create_default_context(cafile=tls_files[0])
    server = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", ports[2]), timeout=1).close()
                socket.create_connection(("127.0.0.1", ports[0]), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        # One UA first, so that what every connection shares (rustls's
        # tables, the session cache's first entries) is in the baseline.
        warm = [ua(ports[0], context) for _ in range(300)]
        time.sleep(1)
        before = rss_bytes(server.pid)
        sockets = [ua(ports[0], context) for _ in range(uas)]
        time.sleep(2)
        after = rss_bytes(server.pid)
        del sockets, warm
        return (after - before) / uas
    finally:
        server.terminate()
        server.wait(timeout=10)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--uas", type=int, default=4000)
    parser.add_argument("--herald", default="target/release/herald")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as keys:
        cert, key = f"{keys}/cert.pem", f"{keys}/key.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost"],
            check=True, capture_output=True)
        plain = measure(options.herald, options.uas, None)
        tls = measure(options.herald, options.uas, (cert, key))
    print(f"RSS per idle UA, {options.uas} UAs: ws:// {plain:,.0f} B, wss:// {tls:,.0f} B")


if __name__ == "__main__":
    sys.exit(main())
