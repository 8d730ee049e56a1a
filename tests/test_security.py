"""CURVE keys, the allow-list and its reloads, refusals as the consumer reports them, private ipc directories.

Real zmq sockets on the loopback; the producer and consumer processes come in the pipeline tests below.
"""

from __future__ import annotations

import os
import shutil
import time

import pytest
import zmq
import zmq.auth

from pipeline_helpers import wait_until
from pxdbg.shared import security
from pxdbg.shared.errors import ConfigError
from pxdbg.shared.spec import TransportOptions

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def keys(tmp_path):
    """A producer key pair, two consumer key pairs (alice allow-listed, mallory not), an allow-list directory."""
    kdir = tmp_path / "keys"
    allow = tmp_path / "allow"
    allow.mkdir()
    pairs = {name: security.new_key_pair(kdir, name) for name in ("producer", "alice", "mallory", "impostor")}
    shutil.copy(pairs["alice"][0], allow)
    return pairs, allow


class CurveServer:
    """A ROUTER set up by apply_server, bound on a loopback port; the test thread answers it."""

    def __init__(self, opts: TransportOptions) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        self.allow = security.apply_server(self.sock, opts, ["tcp://127.0.0.1:0"])
        self.sock.bind("tcp://127.0.0.1:*")
        self.endpoint = self.sock.last_endpoint.decode()

    def echo(self, timeout_ms: int) -> bytes | None:
        """Answer one request with its payload; None when nothing arrived."""
        if not self.sock.poll(timeout_ms):
            return None
        peer, payload = self.sock.recv_multipart()
        self.sock.send_multipart([peer, payload])
        return payload

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


@pytest.fixture
def server(keys):
    pairs, allow = keys
    srv = CurveServer(TransportOptions(curve_server_secret=str(pairs["producer"][1]), curve_allow_dir=str(allow)))
    yield srv
    srv.close()


def client_opts(pairs, me: str, server_key: str = "producer") -> TransportOptions:
    return TransportOptions(curve_client_secret=str(pairs[me][1]), curve_server_public=str(pairs[server_key][0]))


def attempt(srv: CurveServer, opts: TransportOptions, payload: bytes = b"x" * 300_000):
    """Send one request as a consumer would: (the reply, or None; the refusal the consumer would report)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    try:
        security.apply_client(sock, opts, srv.endpoint)
        sock.connect(srv.endpoint)
        sock.send(payload)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if srv.echo(50) is not None:
                return (sock.recv() if sock.poll(5000) else None), None
            refused = security.refusal(ctx, [srv.endpoint])
            if refused is not None:
                assert srv.echo(200) is None, "nothing of a refused consumer reaches the producer"
                return None, refused
        raise AssertionError("neither a reply nor a refusal within 10 s")
    finally:
        sock.close(0)
        ctx.term()


def test_key_pair_files_are_zeromq_certificates(tmp_path):
    public, secret = security.new_key_pair(tmp_path / "k", "producer1")
    assert (public.name, secret.name) == ("producer1.key", "producer1.key_secret")
    assert os.stat(secret).st_mode & 0o777 == 0o600 and os.stat(public).st_mode & 0o077 in (0o044, 0o004, 0o000)
    pk, sk = zmq.auth.load_certificate(secret)
    assert zmq.auth.load_certificate(public) == (pk, None)
    assert zmq.curve_public(sk) == pk, "the secret file's two keys belong together"
    assert security.load_secret(secret) == (pk, sk)
    with pytest.raises(ConfigError, match="exists"):
        security.new_key_pair(tmp_path / "k", "producer1")
    for bad in ("", "../x", ".hidden", "a/b"):
        with pytest.raises(ConfigError, match="plain file name"):
            security.new_key_pair(tmp_path / "k", bad)


def test_bad_key_files_are_one_line_errors(tmp_path):
    public, secret = security.new_key_pair(tmp_path, "c")
    with pytest.raises(security.KeyFileError, match="holds no secret key"):
        security.load_secret(public)
    os.chmod(secret, 0o644)
    with pytest.raises(security.KeyFileError, match="chmod 600"):
        security.load_secret(secret)
    garbage = tmp_path / "garbage.key"
    garbage.write_text('curve\n    public-key = "short"\n')
    with pytest.raises(security.KeyFileError, match="not a ZeroMQ CURVE certificate"):
        security.load_public(garbage)
    with pytest.raises(security.KeyFileError, match="pxdbg keys new"):
        security.load_public(tmp_path / "missing.key")


def test_allow_listed_consumer_gets_identical_bytes(server, keys):
    pairs, _ = keys
    payload = os.urandom(300_000)
    reply, refused = attempt(server, client_opts(pairs, "alice"), payload)
    assert refused is None and reply == payload
    assert server.allow.admitted >= 1 and server.allow.refused == 0


def test_unknown_key_is_refused_and_counted(server, keys):
    pairs, _ = keys
    reply, refused = attempt(server, client_opts(pairs, "mallory"))
    assert reply is None
    assert f"producer {server.endpoint} refused authentication" in refused
    assert str(pairs["mallory"][0]) in refused, "the message names the key file to allow-list"
    assert server.allow.refused_unknown_key == 1
    assert server.allow.counters()["refused_auth"] >= 1


def test_plaintext_consumer_is_refused_and_counted(server):
    reply, refused = attempt(server, TransportOptions())
    assert reply is None
    assert f"producer {server.endpoint} refused authentication: it requires CURVE keys" in refused
    assert wait_until(lambda: server.allow.refused_handshake >= 1, timeout=10)
    assert server.allow.refused_unknown_key == 0


def test_consumer_refuses_a_producer_without_the_expected_server_key(server, keys):
    """A consumer told to trust 'impostor' does not talk to a producer holding another key (man in the middle)."""
    pairs, _ = keys
    reply, refused = attempt(server, client_opts(pairs, "alice", server_key="impostor"))
    assert reply is None
    assert "refused authentication (the CURVE handshake failed)" in refused and "man in the middle" in refused
    assert str(pairs["impostor"][0]) in refused


def test_allow_list_reloads_when_its_files_change(server, keys):
    pairs, allow = keys
    assert attempt(server, client_opts(pairs, "mallory"))[0] is None
    shutil.copy(pairs["mallory"][0], allow)
    assert wait_until(lambda: len(server.allow.keys) == 2, timeout=10)
    assert attempt(server, client_opts(pairs, "mallory"), b"hello")[0] == b"hello"
    os.remove(allow / "alice.key")
    assert wait_until(lambda: len(server.allow.keys) == 1, timeout=10)
    assert attempt(server, client_opts(pairs, "alice"))[0] is None
    assert server.allow.refused_unknown_key == 2


def test_allow_list_reloads_on_request(keys, monkeypatch):
    """reload_allow_lists (what SIGHUP calls) re-reads at once, with the periodic check out of the way."""
    pairs, allow = keys
    monkeypatch.setattr(security, "RELOAD_CHECK_S", 3600.0)
    srv = CurveServer(TransportOptions(curve_server_secret=str(pairs["producer"][1]), curve_allow_dir=str(allow)))
    try:
        reloads = srv.allow.reloads
        shutil.copy(pairs["mallory"][0], allow)
        assert attempt(srv, client_opts(pairs, "mallory"))[0] is None, "not re-read yet"
        security.reload_allow_lists()
        assert wait_until(lambda: srv.allow.reloads > reloads, timeout=10)
        assert attempt(srv, client_opts(pairs, "mallory"), b"in")[0] == b"in"
    finally:
        srv.close()


def test_keys_from_the_environment(keys, monkeypatch):
    pairs, allow = keys
    monkeypatch.setenv("PXDBG_CURVE_SERVER_SECRET", str(pairs["producer"][1]))
    monkeypatch.setenv("PXDBG_CURVE_ALLOW_DIR", str(allow))
    monkeypatch.setenv("PXDBG_CURVE_CLIENT_SECRET", str(pairs["alice"][1]))
    monkeypatch.setenv("PXDBG_CURVE_SERVER_PUBLIC", str(pairs["producer"][0]))
    srv = CurveServer(TransportOptions())
    try:
        assert srv.allow is not None and srv.allow.directory == str(allow)
        assert attempt(srv, TransportOptions(), b"env")[0] == b"env"
        # an option given explicitly wins over the environment
        assert attempt(srv, client_opts(pairs, "mallory"))[0] is None
    finally:
        srv.close()


def test_misconfigurations_are_config_errors(keys, tmp_path):
    pairs, _ = keys
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        with pytest.raises(ConfigError, match="needs both key files"):
            security.apply_client(sock, TransportOptions(curve_client_secret=str(pairs["alice"][1])), "tcp://h:1")
        with pytest.raises(ConfigError, match="needs an allow-list"):
            security.apply_server(
                sock, TransportOptions(curve_server_secret=str(pairs["producer"][1])), ["tcp://127.0.0.1:0"]
            )
        with pytest.raises(ConfigError, match="no allow-list directory"):
            security.apply_server(
                sock,
                TransportOptions(curve_server_secret=str(pairs["producer"][1]), curve_allow_dir=str(tmp_path / "nope")),
                ["tcp://*:1"],
            )
        sock.close(0)
    finally:
        ctx.term()


def test_ipc_without_curve_needs_a_private_directory(tmp_path, keys):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o755)
    pairs, allow = keys
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.ROUTER)
        sock.linger = 0
        ep = f"ipc://{private}/p.sock"
        # CURVE keys do not apply to a producer with only ipc endpoints (local workers inherit the environment)
        opts = TransportOptions(curve_server_secret=str(pairs["producer"][1]), curve_allow_dir=str(allow))
        assert security.apply_server(sock, opts, [ep]) is None
        sock.bind(ep)
        assert os.stat(private).st_mode & 0o777 == 0o700
        client = ctx.socket(zmq.DEALER)
        client.linger = 0
        security.apply_client(client, client_opts(pairs, "alice"), ep)  # plaintext on ipc
        client.connect(ep)
        client.send(b"local")
        assert sock.poll(5000) and sock.recv_multipart()[1] == b"local"
        client.close(0)
        with pytest.raises(ConfigError, match=r"socket directory .*shared is not private \(mode 0755"):
            security.apply_server(sock, TransportOptions(), [f"ipc://{shared}/p.sock"])
        with pytest.raises(ConfigError, match="abstract socket"):
            security.apply_server(sock, TransportOptions(), ["ipc://@pxdbg-test"])
        sock.close(0)
    finally:
        ctx.term()


def test_the_guard_thread_ends_with_its_context(keys):
    pairs, allow = keys
    srv = CurveServer(TransportOptions(curve_server_secret=str(pairs["producer"][1]), curve_allow_dir=str(allow)))
    guard = security._guard(srv.ctx, create=False)
    assert guard is not None and guard._thread.is_alive()
    srv.close()  # ctx.term() returns only once the guard closed its sockets
    guard._thread.join(timeout=10)
    assert not guard._thread.is_alive()
    assert all(g is not guard for g in security._GUARDS.values())


def test_context_destroy_with_a_consumer_guard_running(keys):
    """The consumer closes with Context.destroy(): the guard's own sockets are closed by the guard, not raced."""
    pairs, _ = keys
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    security.apply_client(sock, client_opts(pairs, "alice"), "tcp://127.0.0.1:9")
    sock.connect("tcp://127.0.0.1:9")
    guard = security._guard(ctx, create=False)
    ctx.destroy(linger=0)
    guard._thread.join(timeout=10)
    assert not guard._thread.is_alive() and ctx.closed
