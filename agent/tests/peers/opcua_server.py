"""An OPC UA server for the agent's tests: an asyncua server whose
variables change over time and which raises an alarm event now and then.

Usage: python3 opcua_server.py --port PORT [--without NAME ...]
           [--delete-when FILE] [--secure DIR] [--user USER:PASSWORD]
           [--record FILE]

The address space (namespace 2, string node ids; the agent's tests
configure the same items):

  ns=2;s=press.temp      Double   20.0 + 0.5 per 100 ms, back to 20 at 30
  ns=2;s=press.count     Int32    +1 every 200 ms
  ns=2;s=press.running   Boolean  true for 1 s, false for 1 s, ...
  ns=2;s=press.mode      String   "RUN" for 1.5 s, "STOP" for 1.5 s, ...
  ns=2;s=press.doomed    Double   42.0 (deleted when FILE appears)
  ns=2;s=press.broken    Double   NaN (a bad value)
  ns=2;s=press.level     Int32    1, 2, 3, 1, ... every 700 ms (an enumeration)

Every 700 ms the Server object emits an event, severity 100 (below the
tests' threshold) or 800 alternately, message "oil pressure low", source
name "press".

--without NAME leaves press.NAME out (a server restarted with another
address space); --delete-when FILE deletes press.doomed once FILE exists
(a node deleted while subscribed, its subscribers told
BadNodeIdUnknown); --secure DIR offers only Basic256Sha256
and Aes128-Sha256-RsaOaep with SignAndEncrypt, with a certificate and key
it makes in DIR (server-cert.der, server-key.pem; kept when present) and a
client certificate and key for the agent (client-cert.der,
client-key.pem); --user USER:PASSWORD asks for that user name and
password (anonymous refused); --record FILE appends the name of each kind
of request a client sends (ReadRequest, CreateMonitoredItemsRequest, ...)
the first time it arrives, so a test can assert that no request changing
the server (WriteRequest, CallRequest, ...) ever came.
"""

import argparse
import asyncio
import datetime
import ipaddress
import math
import os
import socket
from pathlib import Path

from asyncua import Server, ua
from asyncua.crypto.cert_gen import (
    dump_private_key_as_pem,
    generate_private_key,
    generate_self_signed_app_certificate,
)
from asyncua.server.user_managers import UserManager
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

SERVER_URI = "urn:otwatch:test:opcua-server"
CLIENT_URI = "urn:otwatch:agent"


def make_cert(dir: Path, stem: str, uri: str, use) -> None:
    """A self-signed application certificate (DER) and key (PEM), kept
    when already there."""
    cert_file, key_file = dir / f"{stem}-cert.der", dir / f"{stem}-key.pem"
    if cert_file.exists() and key_file.exists():
        return
    key = generate_private_key()
    names = [
        x509.UniformResourceIdentifier(uri),
        x509.DNSName("localhost"),
        x509.DNSName("127.0.0.1"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    cert = generate_self_signed_app_certificate(
        key, f"otwatch test {stem}", {}, names, [use], days=30
    )
    key_file.write_bytes(dump_private_key_as_pem(key))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.DER))


class OneUser(UserManager):
    def __init__(self, user: str, password: str):
        self.user, self.password = user, password

    def get_user(self, iserver, username=None, password=None, certificate=None):
        from asyncua.crypto.permission_rules import User, UserRole

        if username == self.user and password == self.password:
            return User(role=UserRole.User)
        return None


def record_requests(path: str) -> None:
    """Has the server append each kind of request it receives to path."""
    from asyncua.server.uaprocessor import UaProcessor

    seen = set()
    process = UaProcessor._process_message

    async def recording(self, typeid, requesthdr, seqhdr, body):
        name = ua.ObjectIdNames.get(typeid.Identifier, str(typeid))
        name = name.replace("_Encoding_DefaultBinary", "")
        if name not in seen:
            seen.add(name)
            with open(path, "a") as f:
                f.write(name + "\n")
        return await process(self, typeid, requesthdr, seqhdr, body)

    UaProcessor._process_message = recording


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--without", action="append", default=[])
    parser.add_argument("--delete-when")
    parser.add_argument("--secure")
    parser.add_argument("--user")
    parser.add_argument("--record")
    args = parser.parse_args()
    if args.record:
        record_requests(args.record)

    user_manager = None
    if args.user:
        name, password = args.user.split(":", 1)
        user_manager = OneUser(name, password)
    server = Server(user_manager=user_manager)
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{args.port}/")
    server.set_server_name("otwatch test server")
    await server.set_application_uri(SERVER_URI)
    if args.secure:
        dir = Path(args.secure)
        dir.mkdir(parents=True, exist_ok=True)
        make_cert(dir, "server", SERVER_URI, ExtendedKeyUsageOID.SERVER_AUTH)
        make_cert(dir, "client", CLIENT_URI, ExtendedKeyUsageOID.CLIENT_AUTH)
        await server.load_certificate(str(dir / "server-cert.der"))
        await server.load_private_key(str(dir / "server-key.pem"))
        server.set_security_policy(
            [
                ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
                ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
            ]
        )
    else:
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    if args.user:
        server.set_identity_tokens([ua.UserNameIdentityToken])

    idx = await server.register_namespace("urn:otwatch:test")
    assert idx == 2, idx
    press = await server.nodes.objects.add_object(ua.NodeId("press", idx), "press")
    initial = {
        "temp": ua.Variant(20.0, ua.VariantType.Double),
        "count": ua.Variant(0, ua.VariantType.Int32),
        "running": ua.Variant(True, ua.VariantType.Boolean),
        "mode": ua.Variant("RUN", ua.VariantType.String),
        "doomed": ua.Variant(42.0, ua.VariantType.Double),
        "broken": ua.Variant(math.nan, ua.VariantType.Double),
        "level": ua.Variant(1, ua.VariantType.Int32),
    }
    nodes = {}
    for name, value in initial.items():
        if name in args.without:
            continue
        nodes[name] = await press.add_variable(
            ua.NodeId(f"press.{name}", idx), name, value
        )

    generator = await server.get_event_generator()
    generator.event.Message = ua.LocalizedText("oil pressure low")
    generator.event.SourceName = "press"

    async def set(name, value, kind):
        if name in nodes:
            await nodes[name].write_value(ua.Variant(value, kind))

    async with server:
        print(f"listening on {args.port}", flush=True)
        tick = 0
        while True:
            await asyncio.sleep(0.1)
            tick += 1
            await set("temp", 20.0 + (tick % 20) * 0.5, ua.VariantType.Double)
            if tick % 2 == 0:
                await set("count", tick // 2, ua.VariantType.Int32)
            await set("running", (tick // 10) % 2 == 0, ua.VariantType.Boolean)
            await set("mode", "RUN" if (tick // 15) % 2 == 0 else "STOP", ua.VariantType.String)
            if tick % 7 == 0:
                await set("level", (tick // 7) % 3 + 1, ua.VariantType.Int32)
                generator.event.Severity = 800 if (tick // 7) % 2 == 0 else 100
                await generator.trigger()
            if (
                args.delete_when
                and "doomed" in nodes
                and os.path.exists(args.delete_when)
            ):
                doomed = nodes.pop("doomed")
                # A conforming server tells a deleted node's subscribers
                # BadNodeIdUnknown; asyncua 1.1.8 means to (its delete
                # callback) but never awaits the call, so the script sends
                # that status itself before deleting the node.
                await doomed.write_value(
                    ua.DataValue(StatusCode_=ua.StatusCode(ua.StatusCodes.BadNodeIdUnknown))
                )
                await asyncio.sleep(0.5)
                await server.delete_nodes([doomed])
                print("deleted press.doomed", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
