"""An SMTP server for the tests (aiosmtpd): accepts every message and writes it, parsed, as
one JSON file per message into a directory. Prints the port it listens on (127.0.0.1, a free
port) as its first line of output once it accepts connections.

    python smtp_sink.py DIR [--starttls CERT KEY] [--implicit-tls CERT KEY] [--auth USER PASSWORD]

--starttls offers STARTTLS and refuses mail without it; --implicit-tls speaks TLS from the first
byte (SMTPS); --auth requires AUTH PLAIN/LOGIN with that user and password (over TLS when TLS
is on, else in the clear).
"""

import argparse
import asyncio
import email
import email.policy
import json
import os
import ssl
import uuid

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


class JsonDir:
    def __init__(self, directory):
        self.directory = directory

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        body = message.get_body(preferencelist=("plain",))
        record = {
            "envelope_from": envelope.mail_from,
            "envelope_to": list(envelope.rcpt_tos),
            "from": str(message.get("From", "")),
            "to": str(message.get("To", "")),
            "subject": str(message.get("Subject", "")),
            "message_id": str(message.get("Message-ID", "")),
            "content_type": message.get_content_type(),
            "body": body.get_content() if body is not None else "",
            "headers": [name for name in message.keys()],
            "tls": server.transport.get_extra_info("sslcontext") is not None,
            "auth_user": session.auth_data.login.decode() if session.authenticated else None,
        }
        # Written whole, then renamed: a reader never sees half a file.
        name = uuid.uuid4().hex
        partial = os.path.join(self.directory, name + ".partial")
        with open(partial, "w", encoding="utf-8") as out:
            json.dump(record, out)
        os.rename(partial, os.path.join(self.directory, name + ".json"))
        return "250 Message accepted for delivery"


def tls_context(cert, key):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("directory")
    parser.add_argument("--starttls", nargs=2, metavar=("CERT", "KEY"))
    parser.add_argument("--implicit-tls", nargs=2, metavar=("CERT", "KEY"))
    parser.add_argument("--auth", nargs=2, metavar=("USER", "PASSWORD"))
    args = parser.parse_args()

    starttls = tls_context(*args.starttls) if args.starttls else None
    implicit = tls_context(*args.implicit_tls) if args.implicit_tls else None
    authenticator = None
    if args.auth:
        user, password = (part.encode() for part in args.auth)

        def authenticator(server, session, envelope, mechanism, data):
            ok = isinstance(data, LoginPassword) and data.login == user and data.password == password
            # handled=False: aiosmtpd answers (235, or 535 on a wrong password) itself.
            return AuthResult(success=ok, handled=False, auth_data=data if ok else None)

    handler = JsonDir(args.directory)

    def protocol():
        return SMTP(
            handler,
            tls_context=starttls,
            require_starttls=starttls is not None,
            authenticator=authenticator,
            auth_required=authenticator is not None,
            # AUTH only once the connection is encrypted, when it is to be.
            auth_require_tls=starttls is not None,
        )

    loop = asyncio.get_running_loop()
    server = await loop.create_server(protocol, host="127.0.0.1", port=0, ssl=implicit)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


asyncio.run(main())
