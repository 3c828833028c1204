"""Opens N TCP connections to HOST:PORT and holds them without sending a byte; every
5 s prints how many the server still keeps open. Used by soak.sh.

    python3 idle-conns.py 127.0.0.1 18080 20000 35
"""
import resource
import socket
import sys
import time

host, port, n, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 1024), hard))
conns, refused = [], 0
for _ in range(n):
    try:
        s = socket.socket()
    except OSError:  # out of file descriptors: hold what we have
        refused += 1
        continue
    s.settimeout(2)
    try:
        s.connect((host, port))
        s.setblocking(False)
        conns.append(s)
    except OSError:
        refused += 1
        s.close()
print(f"idle: opened {len(conns)}, failed {refused}", flush=True)
end = time.time() + seconds
while time.time() < end:
    time.sleep(5)
    open_ = 0
    for s in conns:
        try:
            if s.recv(1, socket.MSG_PEEK) == b"":
                continue  # closed by the server
        except BlockingIOError:
            pass
        except OSError:
            continue
        open_ += 1
    print(f"idle: {open_} of {len(conns)} still open", flush=True)
