"""The harness's own decisions: when it refuses, skips or fails (no root needed), and its refusal beside a
running Slurm (the farm's own, on a machine where it runs)."""

from __future__ import annotations

import cluster as farm_cluster
import pytest


def test_without_root_the_reason_says_so(monkeypatch):
    monkeypatch.setattr(farm_cluster.os, "geteuid", lambda: 1000)
    reason = farm_cluster.check_environment(5)
    assert reason is not None and "need root" in reason and "\n" not in reason


def test_missing_packages_are_named_with_the_install_command(monkeypatch):
    monkeypatch.setattr(farm_cluster.os, "geteuid", lambda: 0)
    monkeypatch.setattr(farm_cluster, "_which", lambda name: None if name in ("slurmd", "dnsmasq") else "/bin/true")
    reason = farm_cluster.check_environment(5, need_dns=True)
    assert reason == ("missing Debian packages dnsmasq-base slurmd; install them with tools/farm-deps.sh (as root)")


def test_unavailable_skips_on_a_users_machine_and_fails_in_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="farm tests: no root"):
        farm_cluster.unavailable("no root")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="cannot run: no root"):
        farm_cluster.unavailable("no root")


@pytest.mark.farm
def test_refuses_to_start_beside_a_running_slurm(cluster):
    """With the farm up, a second one must refuse: its daemons count as a Slurm of the machine."""
    reason = farm_cluster.check_environment(cluster.nodes)
    assert reason is not None and "a Slurm or munge of this machine is running" in reason, reason
    second = farm_cluster.Cluster(2, {"p": [1, 2]})
    with pytest.raises(farm_cluster.ClusterUnavailable, match="refuse"):
        second.start()
