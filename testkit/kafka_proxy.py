"""A test-only TLS + SASL/SCRAM-SHA-512 front for the embedded Tansu broker.

Why it exists: Tansu 0.6.0 cannot serve TLS or SASL/SCRAM, yet what users
run against is a cluster with both.  This proxy plays the broker's security
side so the real clients (kafka-python in the CLI, aiokafka inside Faust)
go through their real TLS verification and SASL code paths:

* it terminates TLS with a certificate the test signs with its own CA;
* it answers SaslHandshake (API key 17) and SaslAuthenticate (API key 36)
  itself, running the server side of SCRAM-SHA-512 (RFC 5802 / RFC 7677);
* before authentication it forwards only ApiVersions (key 18) to Tansu and
  closes the connection on any other request, as a real broker does;
* once authenticated it forwards length-prefixed Kafka frames both ways.

Tansu must advertise the proxy's address (``--advertised-listener-url``) so
Metadata and FindCoordinator answers send clients back through the proxy.
Tansu's own ApiVersions answer already lists keys 17 (v0-1) and 36 (v0-2),
so it is forwarded untouched.

Counters (``stats``) let a test prove that every client connection which
did real work authenticated via SCRAM.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import os
import ssl
import struct
import threading
from collections import Counter
from types import TracebackType

API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE = 18, 17, 36
SASL_AUTHENTICATION_FAILED, UNSUPPORTED_SASL_MECHANISM, ILLEGAL_SASL_STATE = 58, 33, 34
MECHANISM = "SCRAM-SHA-512"
ITERATIONS = 4096  # the minimum Kafka clients accept for SCRAM
MAX_FRAME = 64 * 1024 * 1024
FAILED_AUTH_DELAY_S = 0.1  # Kafka's connection.failed.authentication.delay.ms: the client reads the error first


class AuthFailed(Exception):
    """The client's SCRAM proof (or its messages) did not check out."""


# -- wire helpers -------------------------------------------------------------------
def _uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_uvarint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _skip_tagged_fields(buf: bytes, pos: int) -> int:
    count, pos = _read_uvarint(buf, pos)
    for _ in range(count):
        _, pos = _read_uvarint(buf, pos)
        size, pos = _read_uvarint(buf, pos)
        pos += size
    return pos


def parse_request_header(frame: bytes, flexible: bool) -> tuple[int, int, int, int]:
    """(api_key, api_version, correlation_id, body offset) of a request frame.

    Header v1 is key, version, correlation id and a nullable int16 client id;
    header v2 (flexible versions) appends tagged fields.
    """
    api_key, api_version, correlation = struct.unpack_from(">hhi", frame, 0)
    (client_len,) = struct.unpack_from(">h", frame, 8)
    pos = 10 + max(client_len, 0)
    if flexible:
        pos = _skip_tagged_fields(frame, pos)
    return api_key, api_version, correlation, pos


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    """One Kafka frame without its 4-byte size (raises IncompleteReadError at EOF)."""
    (size,) = struct.unpack(">i", await reader.readexactly(4))
    if not 0 <= size <= MAX_FRAME:
        raise ConnectionError(f"bad frame size {size}")
    return await reader.readexactly(size)


def _frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


# -- SCRAM (server side) ------------------------------------------------------------
class ScramServer:
    """One SCRAM-SHA-512 exchange: client-first -> server-first, client-final -> server-final."""

    def __init__(self, users: dict[str, tuple[bytes, bytes, bytes]]) -> None:
        self.users = users  # name -> (salt, stored key, server key)
        self.state = "first"
        self.username = ""
        self._auth_prefix = ""
        self._nonce = ""
        self._keys: tuple[bytes, bytes, bytes] | None = None

    @staticmethod
    def credentials(password: str, salt: bytes | None = None) -> tuple[bytes, bytes, bytes]:
        """What a broker stores for a user: (salt, StoredKey, ServerKey), never the password."""
        salt = salt or os.urandom(16)
        salted = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, ITERATIONS)
        client_key = hmac.new(salted, b"Client Key", "sha512").digest()
        server_key = hmac.new(salted, b"Server Key", "sha512").digest()
        return salt, hashlib.sha512(client_key).digest(), server_key

    def step(self, message: bytes) -> tuple[bytes, bool]:
        """Answer one client message; returns (reply, authenticated).  Raises AuthFailed."""
        text = message.decode("utf-8", errors="strict")
        if self.state == "first":
            return self._first(text), False
        if self.state == "final":
            return self._final(text), True
        raise AuthFailed("exchange already finished")

    def _first(self, text: str) -> bytes:
        parts = text.split(",", 2)
        if len(parts) != 3 or parts[0] not in ("n", "y"):
            raise AuthFailed("bad gs2 header")
        bare = parts[2]
        attrs = dict(a.split("=", 1) for a in bare.split(",") if "=" in a)
        self.username = attrs.get("n", "").replace("=2C", ",").replace("=3D", "=")
        client_nonce = attrs.get("r", "")
        if not client_nonce:
            raise AuthFailed("no client nonce")
        self._keys = self.users.get(self.username)
        # An unknown user still gets a server-first message (with a fake salt), as Kafka does,
        # so the failure only shows after the proof and does not reveal which users exist.
        salt = self._keys[0] if self._keys else os.urandom(16)
        self._nonce = client_nonce + base64.b64encode(os.urandom(18)).decode()
        server_first = f"r={self._nonce},s={base64.b64encode(salt).decode()},i={ITERATIONS}"
        self._auth_prefix = f"{bare},{server_first}"
        self.state = "final"
        return server_first.encode()

    def _final(self, text: str) -> bytes:
        self.state = "done"
        without_proof, _, proof_attr = text.rpartition(",p=")
        attrs = dict(a.split("=", 1) for a in without_proof.split(",") if "=" in a)
        if attrs.get("r") != self._nonce or self._keys is None:
            raise AuthFailed("nonce mismatch or unknown user")
        _, stored_key, server_key = self._keys
        auth_message = f"{self._auth_prefix},{without_proof}".encode()
        signature = hmac.new(stored_key, auth_message, "sha512").digest()
        try:
            proof = base64.b64decode(proof_attr, validate=True)
        except ValueError as exc:
            raise AuthFailed("bad proof encoding") from exc
        if len(proof) != len(signature):
            raise AuthFailed("bad proof length")
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        if not hmac.compare_digest(hashlib.sha512(client_key).digest(), stored_key):
            raise AuthFailed("invalid credentials")
        server_signature = hmac.new(server_key, auth_message, "sha512").digest()
        return b"v=" + base64.b64encode(server_signature)


# -- responses ----------------------------------------------------------------------
def handshake_response(correlation: int, error: int) -> bytes:
    """SaslHandshake v0/v1 response: error code and the enabled mechanisms."""
    mech = MECHANISM.encode()
    return struct.pack(">ihih", correlation, error, 1, len(mech)) + mech


def authenticate_response(correlation: int, version: int, error: int, message: str | None, token: bytes) -> bytes:
    """SaslAuthenticate v0-v2 response (v1 adds session lifetime, v2 is the flexible encoding)."""
    if version >= 2:
        msg = b"\x00" if message is None else _uvarint(len(message.encode()) + 1) + message.encode()
        return (struct.pack(">i", correlation) + b"\x00" + struct.pack(">h", error) + msg
                + _uvarint(len(token) + 1) + token + struct.pack(">q", 0) + b"\x00")
    msg = struct.pack(">h", -1) if message is None else struct.pack(">h", len(message.encode())) + message.encode()
    out = struct.pack(">ih", correlation, error) + msg + struct.pack(">i", len(token)) + token
    return out + struct.pack(">q", 0) if version >= 1 else out


def authenticate_token(frame: bytes, version: int, pos: int) -> bytes:
    """The auth bytes of a SaslAuthenticate request body."""
    if version >= 2:
        size, pos = _read_uvarint(frame, pos)
        return frame[pos:pos + size - 1]
    (size,) = struct.unpack_from(">i", frame, pos)
    return frame[pos + 4:pos + 4 + size]


# -- the proxy ----------------------------------------------------------------------
class SecureKafkaProxy:
    """TLS + SASL/SCRAM-SHA-512 in front of a plaintext Kafka broker; runs its own event loop thread.

    ``stats`` counts: ``connections`` (TCP accepted), ``tls_failed``,
    ``authenticated`` (SCRAM succeeded), ``auth_failed``, ``refused`` (a
    non-SASL request before authentication), ``version_probe_only`` (closed
    after ApiVersions without authenticating), ``requests_forwarded`` and
    ``responses_forwarded`` (only ever counted after authentication).
    """

    def __init__(self, host: str, port: int, upstream: tuple[str, int], context: ssl.SSLContext,
                 users: dict[str, str]) -> None:
        self.host, self.port, self.upstream, self.context = host, port, upstream, context
        self._users = {name: ScramServer.credentials(pw) for name, pw in users.items()}
        self.stats: Counter[str] = Counter()
        self.usernames: Counter[str] = Counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.stats[key] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.stats)

    # lifecycle
    def start(self) -> SecureKafkaProxy:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._server = loop.run_until_complete(asyncio.start_server(self._serve, self.host, self.port))
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name="kafka-secure-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("proxy did not start")
        return self

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is None or server is None:
            return

        async def shutdown() -> None:
            server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), loop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = self._server = None

    def __enter__(self) -> SecureKafkaProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # one client connection
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._count("connections")
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            try:
                await writer.start_tls(self.context)
            except (ssl.SSLError, OSError):
                self._count("tls_failed")
                return
            up_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
            if not await self._authenticate(reader, writer, up_reader, upstream_writer):
                return
            await self._pump(reader, writer, up_reader, upstream_writer)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, OSError, asyncio.CancelledError):
            pass  # a closed client, or the proxy stopping: nothing to report
        finally:
            for w in (writer, upstream_writer):
                if w is not None:
                    w.close()
                    with contextlib.suppress(Exception):
                        await w.wait_closed()

    async def _authenticate(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter) -> bool:
        """Run the pre-auth phase; True once SCRAM succeeded, False when the connection must close."""
        scram: ScramServer | None = None
        raw_tokens = False  # SaslHandshake v0: tokens follow as bare length-prefixed frames
        seen_versions = False
        while True:
            try:
                frame = await read_frame(reader)
            except asyncio.IncompleteReadError:
                if seen_versions:
                    self._count("version_probe_only")
                return False
            if raw_tokens and scram is not None:
                try:
                    reply, done = scram.step(frame)
                except (AuthFailed, UnicodeDecodeError):
                    self._count("auth_failed")
                    return False
                writer.write(_frame(reply))
                await writer.drain()
                if done:
                    self._authenticated(scram)
                    return True
                continue
            api_key, version = struct.unpack_from(">hh", frame, 0)
            if api_key == API_VERSIONS:
                seen_versions = True
                up_writer.write(_frame(frame))
                await up_writer.drain()
                writer.write(_frame(await read_frame(up_reader)))
                await writer.drain()
            elif api_key == SASL_HANDSHAKE:
                _, _, correlation, pos = parse_request_header(frame, flexible=False)
                (size,) = struct.unpack_from(">h", frame, pos)
                mechanism = frame[pos + 2:pos + 2 + size].decode()
                ok = mechanism == MECHANISM
                writer.write(_frame(handshake_response(correlation, 0 if ok else UNSUPPORTED_SASL_MECHANISM)))
                await writer.drain()
                if not ok:
                    self._count("auth_failed")
                    return False
                scram = ScramServer(self._users)
                raw_tokens = version == 0
            elif api_key == SASL_AUTHENTICATE and scram is not None:
                _, _, correlation, pos = parse_request_header(frame, flexible=version >= 2)
                try:
                    reply, done = scram.step(authenticate_token(frame, version, pos))
                except (AuthFailed, UnicodeDecodeError):
                    self._count("auth_failed")
                    message = f"Authentication failed during authentication due to invalid credentials " \
                              f"with SASL mechanism {MECHANISM}"
                    writer.write(_frame(authenticate_response(correlation, version, SASL_AUTHENTICATION_FAILED,
                                                              message, b"")))
                    await writer.drain()
                    await asyncio.sleep(FAILED_AUTH_DELAY_S)
                    return False
                writer.write(_frame(authenticate_response(correlation, version, 0, None, reply)))
                await writer.drain()
                if done:
                    self._authenticated(scram)
                    return True
            else:
                self._count("refused")  # a broker with SASL closes a connection that skips it
                return False

    def _authenticated(self, scram: ScramServer) -> None:
        self._count("authenticated")
        with self._lock:
            self.usernames[scram.username] += 1

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter) -> None:
        """Forward whole frames both ways until either side closes."""

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter, counter: str) -> None:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, OSError):
                while True:
                    frame = await read_frame(src)
                    self._count(counter)
                    dst.write(_frame(frame))
                    await dst.drain()

        tasks = [asyncio.create_task(copy(reader, up_writer, "requests_forwarded")),
                 asyncio.create_task(copy(up_reader, writer, "responses_forwarded"))]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
