#!/usr/bin/env python3
"""Idle memory per keep-alive AS connection: starts herald (2 shards), opens
N connections to the AS listener that each send one request (GET /health)
and read its answer, then stay open and idle, and prints the server's RSS
growth per connection. Senders keep pools of such connections open between
bursts; each costs this much for as long as it idles.

    python3 bench/as_idle.py [--connections 1000] [--herald target/release/herald]

Loopback only.
"""
import argparse, socket, subprocess, tempfile, time

# The same helpers as the UA measurement (this directory is on the path).
from tls_idle import free_port, rss_bytes


def wait_listening(port, deadline_s=30):
    deadline = time.time() + deadline_s
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("herald did not start listening")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--herald", default="target/release/herald")
    args = parser.parse_args()
    ua, as_port, admin = free_port(), free_port(), free_port()
    with tempfile.TemporaryDirectory() as data_dir:
        server = subprocess.Popen(
            [args.herald, "serve", "--data-dir", data_dir, "--shards", "2",
             "--ua-listen", f"127.0.0.1:{ua}", "--as-listen", f"127.0.0.1:{as_port}",
             "--admin-listen", f"127.0.0.1:{admin}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_listening(as_port)
            time.sleep(1)
            before = rss_bytes(server.pid)
            connections = []
            for _ in range(args.connections):
                conn = socket.create_connection(("127.0.0.1", as_port))
                conn.sendall(b"GET /health HTTP/1.1\r\nHost: bench\r\n\r\n")
                connections.append(conn)
            for conn in connections:
                conn.settimeout(10)
                answer = b""
                while b"\r\n\r\n" not in answer:
                    chunk = conn.recv(4096)
                    if not chunk:
                        raise RuntimeError("connection closed before its answer")
                    answer += chunk
                if not answer.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"unexpected answer: {answer[:40]!r}")
            time.sleep(1)
            per_connection = (rss_bytes(server.pid) - before) / args.connections
            print(f"{per_connection:.0f} B of server RSS per idle keep-alive AS connection "
                  f"({args.connections} connections)")
            for conn in connections:
                conn.close()
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
