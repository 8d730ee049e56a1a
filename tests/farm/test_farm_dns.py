"""A real DNS name whose addresses change during a run: dnsmasq in its own namespace, the consumer in another
one whose resolv.conf points there, so every lookup goes through getaddrinfo and the real resolver path."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

import pytest
from cluster import _which, unavailable
from farm import digest, expected, wait_for

from pxdbg.shared.digitsfile import read_digits

pytestmark = [pytest.mark.farm, pytest.mark.slow]

NAME = "producers.farm.test"
DNS_ADDR, CLIENT_ADDR = "198.18.0.53", "198.18.0.60"


@pytest.fixture(scope="module")
def dns(farm):
    if _which("dnsmasq") is None:
        unavailable("dnsmasq is missing (Debian package dnsmasq-base; tools/farm-deps.sh installs it)")
    c = farm.cluster
    hosts = c.root / "dns-hosts"

    def publish(nodes):
        hosts.write_text("".join(f"{c.addr(i)} {NAME}\n" for i in nodes))
        hosts.chmod(0o644)

    publish([1])
    c.add_namespace("dns1", DNS_ADDR, "pxdbg-vdns")
    c.add_namespace("dq1", CLIENT_ADDR, "pxdbg-vdq")
    c.netns_resolv("dq1", f"nameserver {DNS_ADDR}\noptions timeout:1 attempts:2\n")
    server = c.spawn(
        "dnsmasq",
        [
            "dnsmasq",
            "--no-daemon",
            "--port",
            "53",
            "--listen-address",
            DNS_ADDR,
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            f"--addn-hosts={hosts}",
            f"--pid-file={c.root / 'dnsmasq.pid'}",
            "--user=root",
            "--log-queries",
        ],
        ns="dns1",
    )

    def lookup() -> list[str]:
        out = subprocess.run(  # ip netns exec: the namespace's own /etc/netns/dq1/resolv.conf is bind-mounted
            ["ip", "netns", "exec", "dq1", sys.executable, "-m", "pxdbg.shared.discovery", f"dns://{NAME}:5555"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return out.stdout.split()

    def change(nodes) -> None:
        publish(nodes)
        server.send_signal(signal.SIGHUP)  # dnsmasq re-reads its hosts file

    wait_for(
        lambda: lookup() == [f"tcp://{c.addr(1)}:5555"],
        30,
        f"{NAME} did not resolve through dnsmasq ({c.log_tail('dnsmasq.out')})",
    )
    return lookup, change


def test_dns_name_resolves_through_getaddrinfo_as_it_changes(dns, farm):
    lookup, change = dns
    c = farm.cluster
    change([1, 2, 3])
    assert wait_for(lambda: len(lookup()) == 3 and lookup(), 30, "the third address did not appear") == [
        f"tcp://{c.addr(i)}:5555" for i in (1, 2, 3)
    ]
    change([2])
    assert wait_for(lambda: lookup() == [f"tcp://{c.addr(2)}:5555"], 30, "the removed addresses stayed")
    change([1])


def test_consumer_follows_a_dns_name_whose_addresses_change(dns, farm):
    _, change = dns
    c = farm.cluster
    change([1])
    out = c.root / "dns-run.npz"
    log = c.root / "log" / "dns-consumer.out"
    proc = c.spawn(
        "dns-consumer",
        [
            "ip",
            "netns",
            "exec",
            "dq1",
            sys.executable,
            "-m",
            "pxdbg",
            "run",
            "--connect",
            f"dns://{NAME}:5555",
            "--events",
            "240",
            "--seed",
            "21",
            "--work-ms",
            "40",
            "--out",
            str(out),
            "--json",
            "--connect-timeout",
            "60",
        ],
    )
    first, others = f"tcp://{c.addr(1)}:5555", [f"tcp://{c.addr(i)}:5555" for i in (2, 3)]
    wait_for(
        lambda: re.search(rf"producer {re.escape(first)} ready", log.read_text()),
        60,
        "the consumer did not reach the one published producer",
    )
    change([2, 3])  # the service moves: node1 leaves the name, nodes 2 and 3 join
    try:
        for ep in others:
            wait_for(
                lambda ep=ep: re.search(rf"producer {re.escape(ep)} (ready|appeared)", log.read_text()),
                60,
                f"the consumer did not pick up {ep} from DNS",
            )
        proc.wait(timeout=240)
    except (AssertionError, subprocess.TimeoutExpired):
        print(log.read_text()[-3000:])
        raise
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert [digest(f) for f in read_digits(out)] == expected(21, 0, 240)
    starts = [m.start() for m in re.finditer(r"^\{$", text, re.M)]
    assert starts, text[-3000:]
    summary = json.JSONDecoder().raw_decode(text[starts[-1] :])[0]
    print(
        f"\nDNS: {NAME} moved from node1 to nodes 2 and 3 mid-run; 240 frames identical to in-process generation; "
        f"{summary['frames_per_s']:.1f} frames/s, the event loop waited {summary['wait_ms_total'] / 1e3:.2f} s; "
        f"{'node1 dropped' if re.search(rf'{re.escape(first)} vanished', text) else 'node1 kept while it answers'}"
    )
