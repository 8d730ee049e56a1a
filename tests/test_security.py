"""CURVE keys, the allow-list and its reloads, refusals as the consumer reports them, private ipc directories.

Real zmq sockets on the loopback; the producer and consumer processes come in the pipeline tests below.

Past 500 lines: one test per rule of the allow-list, the key files and the refusals, sharing one set of socket
fixtures.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import zmq
import zmq.auth
from prometheus_client.parser import text_string_to_metric_families
from zmq.utils import z85

from pipeline_helpers import wait_until
from pxdbg.shared import security
from pxdbg.shared.errors import ConfigError
from pxdbg.shared.spec import TransportOptions

pytestmark = pytest.mark.timeout(60)
PXDBG = [sys.executable, "-m", "pxdbg"]


@pytest.fixture
def keys(tmp_path):
    """A producer key pair, two consumer key pairs (alice allow-listed, mallory not), an allow-list directory."""
    kdir = tmp_path / "keys"
    allow = tmp_path / "allow"
    allow.mkdir()
    pairs = {name: security.new_key_pair(kdir, name) for name in ("producer", "alice", "mallory", "impostor")}
    shutil.copy(pairs["alice"][0], allow)
    return pairs, allow


# -- the policy alone: no socket, no thread -------------------------------------------------------------------
def _zap_request(domain: str, mechanism: bytes = b"CURVE", key: bytes | None = None) -> list[bytes]:
    """A ZAP request (RFC 27) as libzmq sends it: version, id, domain, address, identity, mechanism, credentials."""
    return [b"1.0", b"7", domain.encode(), b"192.0.2.5", b"", mechanism, *([key] if key is not None else [])]


def test_zap_reply_admits_listed_keys_only(keys, caplog):
    pairs, allow_dir = keys
    allow = security.AllowList(str(allow_dir))
    domains = {"d": allow}
    alice = z85.decode(security.load_public(pairs["alice"][0]))
    mallory = z85.decode(security.load_public(pairs["mallory"][0]))
    assert security.zap_reply(_zap_request("d", key=alice), domains) == [b"1.0", b"7", b"200", b"OK", b"alice.key", b""]
    caplog.set_level("WARNING", logger="pxdbg.security")
    assert security.zap_reply(_zap_request("d", key=mallory), domains)[2] == b"400"
    assert "is not in the allow-list" in caplog.text
    assert security.zap_reply(_zap_request("d", mechanism=b"NULL"), domains)[2] == b"400"  # no key at all
    assert security.zap_reply(_zap_request("other", key=alice), domains)[2] == b"400"  # another socket's domain
    assert security.zap_reply([b"1.0", b"7"], domains)[:4] == [b"1.0", b"", b"500", b"malformed request"]
    assert (allow.admitted, allow.refused_unknown_key) == (1, 2)


def test_count_refusal_confirms_a_lost_handshake_only_when_it_repeats():
    why = {"auth": "refused: unknown key", "handshake": "refused: handshake"}
    # a final refusal (ZAP said no, or a protocol mismatch) counts at once, and is logged
    state, log_now = security.count_refusal(zmq.EVENT_HANDSHAKE_FAILED_AUTH, why)
    assert state == ("refused: unknown key", security.CONFIRMING_FAILURES) and log_now
    state, log_now = security.count_refusal(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, why)
    assert state[0] == "refused: handshake" and state[1] == security.CONFIRMING_FAILURES and log_now
    # a handshake lost without detail (a producer dying mid-handshake looks the same) needs a second in a row
    state, log_now = security.count_refusal(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, why)
    assert state == ("refused: handshake", 1) and not log_now
    state, log_now = security.count_refusal(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, why, state)
    assert state == ("refused: handshake", 2) and log_now
    state, log_now = security.count_refusal(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, why, state)
    assert state == ("refused: handshake", 3) and not log_now, "logged once, not on every reconnect"
    # a different reason starts again
    state, log_now = security.count_refusal(zmq.EVENT_HANDSHAKE_FAILED_AUTH, why, state)
    assert state == ("refused: unknown key", security.CONFIRMING_FAILURES) and log_now


def test_the_split_modules_keep_the_public_names():
    """Callers import everything from pxdbg.shared.security; each job has its own module below it."""
    from pxdbg.shared.security import arguments, guard, keys, policy, refusals, sockets

    assert security.refusal is refusals.refusal and security.connection_state is refusals.connection_state
    assert security.AuthenticationRefused is refusals.AuthenticationRefused
    assert security.apply_server is sockets.apply_server and security.AllowList is policy.AllowList
    assert security.new_key_pair is keys.new_key_pair and security.options_from_args is arguments.options_from_args
    assert security.reload_allow_lists is guard.reload_allow_lists
    assert issubclass(security.AuthenticationRefused, ConnectionRefusedError)
    for name in security.__all__:
        assert hasattr(security, name), name


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
        try:
            sock.send(payload, zmq.NOBLOCK)
        except zmq.Again:  # the handshake already failed and libzmq dropped the connection: nothing to send to
            pass
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
    monkeypatch.setattr(security.guard, "RELOAD_CHECK_S", 3600.0)
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


def test_allow_list_follows_a_kubelet_style_atomic_swap(keys, tmp_path):
    """A mounted ConfigMap is a directory of symlinks into ..data, which the kubelet swaps in one rename."""
    pairs, _ = keys
    mount = tmp_path / "mount"
    for version, names in (("..v1", ["alice"]), ("..v2", ["alice", "mallory"])):
        (mount / version).mkdir(parents=True)
        for name in names:
            shutil.copy(pairs[name][0], mount / version)
    (mount / "..data").symlink_to("..v1")
    (mount / "alice.key").symlink_to("..data/alice.key")
    allow = security.AllowList(str(mount))
    assert sorted(allow.keys.values()) == ["alice.key"]
    (mount / "mallory.key").symlink_to("..data/mallory.key")  # the kubelet adds the new name, then swaps
    (mount / "..data_tmp").symlink_to("..v2")
    os.replace(mount / "..data_tmp", mount / "..data")
    allow.reload_if_changed()
    assert sorted(allow.keys.values()) == ["alice.key", "mallory.key"]


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
    guard = security.guard.context_guard(srv.ctx, create=False)
    assert guard is not None and guard._thread.is_alive()
    srv.close()  # ctx.term() returns only once the guard closed its sockets
    guard._thread.join(timeout=10)
    assert not guard._thread.is_alive()
    assert all(g is not guard for g in security.guard._GUARDS.values())


def test_context_destroy_with_a_consumer_guard_running(keys):
    """The consumer closes with Context.destroy(): the guard's own sockets are closed by the guard, not raced."""
    pairs, _ = keys
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    security.apply_client(sock, client_opts(pairs, "alice"), "tcp://127.0.0.1:9")
    sock.connect("tcp://127.0.0.1:9")
    guard = security.guard.context_guard(ctx, create=False)
    ctx.destroy(linger=0)
    guard._thread.join(timeout=10)
    assert not guard._thread.is_alive() and ctx.closed


def _thread_cpu_s(native_id: int) -> float:
    """CPU seconds (user + system) one thread of this process has used, from /proc."""
    with open(f"/proc/self/task/{native_id}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_guard_with_nothing_to_poll_sleeps_and_ends_with_its_context():
    """A consumer's guard whose sockets are all closed (its tcp producers left; ipc ones have no monitor) has
    nothing to poll. zmq_poll of no items returns at once: the guard spun a core holding the GIL, which slowed
    every syscall of the I/O thread (a 1,500-entry directory read took 10 s and the walk through dead entries
    stalled), and it never saw its context end (one spinning thread left per finished client)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    security.apply_client(sock, TransportOptions(), "tcp://127.0.0.1:9")
    sock.connect("tcp://127.0.0.1:9")
    guard = security.guard.context_guard(ctx, create=False)
    assert guard is not None
    sock.close(0)
    assert wait_until(lambda: not guard._monitors, 10), "the closed socket's monitor stays"
    thread = guard._thread
    before, t0 = _thread_cpu_s(thread.native_id), time.monotonic()
    time.sleep(1.0)
    used, wall = _thread_cpu_s(thread.native_id) - before, time.monotonic() - t0
    assert used < 0.2 * wall, f"the idle guard used {used:.2f} s of CPU in {wall:.2f} s"
    # it still serves a socket added now
    again = ctx.socket(zmq.DEALER)
    security.apply_client(again, TransportOptions(), "tcp://127.0.0.1:9")
    again.connect("tcp://127.0.0.1:9")
    assert wait_until(lambda: security.connection_state(ctx, "tcp://127.0.0.1:9") == "failing", 10)
    again.close(0)
    ctx.term()
    thread.join(timeout=5)
    assert not thread.is_alive(), "the guard outlived its context"


# -- with real producer processes ------------------------------------------------------------------------
SEED = 9090


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:  # not listening yet
        return 0, str(exc)


def scrape(port: int) -> dict[str, float]:
    status, text = get(port, "/metrics")
    assert status == 200, text
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}


@pytest.fixture
def curve_producer(tmp_path, keys, python_env):
    """`pxdbg produce` on a loopback tcp port with CURVE, an allow-list and a metrics port."""
    pairs, allow = keys
    port, metrics_port = free_port(), free_port()
    log_path = tmp_path / "producer.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                *PXDBG,
                "produce",
                "--bind",
                f"tcp://127.0.0.1:{port}",
                "--curve-server-secret",
                str(pairs["producer"][1]),
                "--curve-allow-dir",
                str(allow),
                "--metrics-port",
                str(metrics_port),
                "--metrics-host",
                "127.0.0.1",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=python_env,
        )
    try:
        assert wait_until(lambda: get(metrics_port, "/readyz")[0] == 200 or proc.poll() is not None, timeout=60), (
            log_path.read_text()
        )
        assert proc.poll() is None, log_path.read_text()
        yield f"tcp://127.0.0.1:{port}", metrics_port, proc, log_path
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_curve_farm_end_to_end(curve_producer, keys):
    """An allow-listed consumer gets the same frames as in-process generation; unknown, keyless and misled
    consumers are refused at once with the producer named; the producer counts them; SIGHUP re-reads the list."""
    from pxdbg import models
    from pxdbg.consumer import BackgroundClient

    endpoint, metrics_port, proc, _ = curve_producer
    pairs, _ = keys
    reference = models.load("parametric").frames(SEED, range(12))
    with BackgroundClient(
        [endpoint], seed=SEED, prefetch=4, connect_timeout=60, transport=client_opts(pairs, "alice")
    ) as client:
        got = [client.next() for _ in range(12)]
    assert all(a == b for a, b in zip(got, reference))

    for opts, words in (
        (client_opts(pairs, "mallory"), "allow-list does not hold"),
        (TransportOptions(), "requires CURVE keys"),
        (client_opts(pairs, "alice", server_key="impostor"), "man in the middle"),
    ):
        # connect_timeout far above the test's own timeout: an answer is a refusal, not a timeout
        with BackgroundClient([endpoint], seed=SEED, connect_timeout=600, transport=opts) as client:
            with pytest.raises(security.AuthenticationRefused) as err:
                client.next()
        assert f"producer {endpoint} refused authentication" in str(err.value) and words in str(err.value)

    # the producer's security thread counts a failed handshake a moment after the consumer saw it fail
    assert wait_until(lambda: scrape(metrics_port)["pxdbg_producer_refused_auth_total"] >= 3, timeout=10)
    numbers = scrape(metrics_port)
    assert numbers["pxdbg_producer_frames_sent_total"] >= 12
    assert numbers["pxdbg_producer_refused_unknown_key_total"] >= 1
    assert numbers["pxdbg_producer_refused_handshake_total"] >= 2
    assert numbers["pxdbg_producer_refused_auth_total"] >= 3
    reloads = numbers["pxdbg_producer_allow_list_reloads_total"]
    proc.send_signal(signal.SIGHUP)  # nothing changed on disk: only the signal makes it re-read
    assert wait_until(lambda: scrape(metrics_port)["pxdbg_producer_allow_list_reloads_total"] > reloads, timeout=20)
    assert proc.poll() is None, "SIGHUP re-reads the allow-list; it does not stop the producer"


def test_keys_new_command(tmp_path):
    run = [*PXDBG, "keys", "new", "alice", "--dir", str(tmp_path / "k")]
    done = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    public, secret = tmp_path / "k" / "alice.key", tmp_path / "k" / "alice.key_secret"
    assert str(public) in done.stdout and str(secret) in done.stdout
    assert security.load_secret(secret)[0] == security.load_public(public)
    again = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert again.returncode == 2
    assert again.stderr.strip().count("\n") == 0 and "exists" in again.stderr


@pytest.mark.slow
def test_producer_refuses_an_ipc_socket_in_a_shared_directory(tmp_path, python_env):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    done = subprocess.run(
        [*PXDBG, "produce", "--bind", f"ipc://{shared}/p.sock"],
        capture_output=True,
        text=True,
        timeout=120,
        env=python_env,
    )
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "is not private (mode 0755" in last and "mkdir -m 700" in last


@pytest.mark.slow
def test_local_workers_sit_in_a_private_directory():
    from pxdbg.consumer import BackgroundClient

    with BackgroundClient(workers=1, seed=SEED, prefetch=2) as client:
        client.next()
        ipc_dir = os.path.dirname(client.endpoints[0][len("ipc://") :])
        assert os.stat(ipc_dir).st_mode & 0o777 == 0o700


def test_allow_list_reload_bounds_key_files_and_summarises_junk(keys, caplog):
    """Rows: a 200 MB .key file was read whole (646 MB peak); 10,000 junk .key files logged ~10,000 lines per
    reload. Now a key file is read only below a size bound, and one line per reload says what was skipped."""
    import resource

    _, allow = keys
    with open(allow / "huge.key", "wb") as f:  # 200 MB that cost nothing on disk
        f.truncate(200 * 2**20)
    for i in range(10_000):
        (allow / f"junk{i:05d}.key").write_text("not a certificate\n")
    caplog.set_level("INFO", logger="pxdbg.security")
    peak0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    al = security.AllowList(str(allow))
    al.reload()
    peak1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    print(f"\nallow-list of 1 key, 10,000 junk files and a 200 MB file: peak memory {peak0:.0f} -> {peak1:.0f} MB")
    assert list(al.keys.values()) == ["alice.key"]
    assert len(warnings) == 2, "one line per reload"
    assert "skipping 10001 file(s)" in warnings[0]
    assert peak1 - peak0 < 64
    with pytest.raises(security.KeyFileError, match="larger than"):
        security.load_public(allow / "huge.key")
