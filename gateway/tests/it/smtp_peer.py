"""A real SMTP server for the email provider's tests: Debian's aiosmtpd.

Usage: smtp_peer.py PORT DIR [CERT KEY USER PASSWORD]

With CERT/KEY it offers STARTTLS and requires it; with USER/PASSWORD it requires AUTH
(PLAIN/LOGIN) with exactly those. Each accepted message is written to DIR/msg-N.json
(`mail_from`, `rcpt_tos`, `data`, `login`). Each DATA command is counted in DIR/data-count.
DIR/replies, if present, holds SMTP replies to answer DATA with, one per line, used in
order (e.g. `450 4.3.0 try later`); when none is left, the message is accepted. Writes
DIR/ready once listening; stops when stdin closes (the test ended).
"""

import json
import os
import ssl
import sys
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


def main():
    port = int(sys.argv[1])
    out = sys.argv[2]
    tls = None
    user = password = None
    if len(sys.argv) >= 7:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(sys.argv[3], sys.argv[4])
        user, password = sys.argv[5].encode(), sys.argv[6].encode()
    lock = threading.Lock()
    state = {"n": 0, "data": 0}

    def next_reply():
        path = os.path.join(out, "replies")
        if not os.path.exists(path):
            return None
        with open(path) as f:
            lines = [line.strip() for line in f if line.strip()]
        if not lines:
            return None
        with open(path, "w") as f:
            f.write("\n".join(lines[1:]) + ("\n" if len(lines) > 1 else ""))
        return lines[0]

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            with lock:
                state["data"] += 1
                with open(os.path.join(out, "data-count"), "w") as f:
                    f.write(str(state["data"]))
                reply = next_reply()
                if reply:
                    return reply
                state["n"] += 1
                n = state["n"]
            login = session.login_data.decode() if isinstance(session.login_data, bytes) else None
            record = {
                "mail_from": envelope.mail_from,
                "rcpt_tos": envelope.rcpt_tos,
                "data": envelope.content.decode("utf8", errors="replace"),
                "login": login,
                "tls": session.ssl is not None,
            }
            tmp = os.path.join(out, f".msg-{n}.json")
            with open(tmp, "w") as f:
                json.dump(record, f)
            os.rename(tmp, os.path.join(out, f"msg-{n}.json"))
            return "250 2.0.0 OK queued as test-%d" % n

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == user
            and auth_data.password == password
        )
        # handled=False: aiosmtpd then answers 535 itself (its default, True, answers nothing).
        return AuthResult(success=ok, handled=False, auth_data=auth_data)

    kwargs = {}
    if tls is not None:
        kwargs = dict(
            tls_context=tls,
            require_starttls=True,
            auth_required=True,
            auth_require_tls=True,
            authenticator=authenticator,
        )
    controller = Controller(Handler(), hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    with open(os.path.join(out, "ready"), "w") as f:
        f.write("ready")
    sys.stdin.read()
    controller.stop()


if __name__ == "__main__":
    main()
