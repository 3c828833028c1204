#!/usr/bin/env python3
"""Sends exactly N ungated dispatches (`executed` actions of bench-rules.yaml, the body
wrk-mixed.lua sends with `-- ungated`) over C keep-alive connections, one request in flight
per connection, and checks every answer is 200 `Executed`. wrk runs for a duration, not a
count; instruction counts per request need a fixed count (see instr-per-request.sh).

    fixed-n.py PORT N [CONNECTIONS]
"""
import selectors
import socket
import sys

port, total = int(sys.argv[1]), int(sys.argv[2])
conns = int(sys.argv[3]) if len(sys.argv) > 3 else 8


def request(seq):
    body = (
        '{"id":"fixed-n-%d","namespace":"bench","tenant":"load","provider":"noop-a",'
        '"action_type":"executed","payload":{"severity":4,"message":"wrk","seq":%d}}' % (seq, seq)
    ).encode()
    head = (
        "POST /v1/dispatch HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
        "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (port, len(body))
    ).encode()
    return head + body


def complete(buf):
    """Length of the first full response in buf (Content-Length framing), or 0."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return 0
    length = 0
    for line in buf[:end].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    full = end + 4 + length
    return full if len(buf) >= full else 0


sel = selectors.DefaultSelector()
sent = done = 0
for _ in range(min(conns, total)):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(request(sent))
    sent += 1
    sel.register(s, selectors.EVENT_READ, bytearray())
while done < total:
    for key, _ in sel.select():
        s, buf = key.fileobj, key.data
        chunk = s.recv(65536)
        if not chunk:
            sys.exit("connection closed early")
        buf += chunk
        n = complete(buf)
        if not n:
            continue
        resp = bytes(buf[:n])
        del buf[:n]
        if not resp.startswith(b"HTTP/1.1 200") or b'"Executed"' not in resp:
            sys.exit("unexpected answer: %r" % resp[:300])
        done += 1
        if sent < total:
            s.sendall(request(sent))
            sent += 1
        else:
            sel.unregister(s)
            s.close()
print("%d requests answered 200 Executed" % done)
