"""Session fixtures of the farm tests: the emulated Slurm cluster and its producer job.

Without root or the Debian packages the farm tests skip with one line; with ``CI=true`` an environment that
cannot be built is a failure that says why (CI runs tools/farm-deps.sh first).
"""

from __future__ import annotations

import pytest
from cluster import Cluster, ClusterUnavailable, check_environment, unavailable
from farm import PRODUCER_NODES, Farm, nodes_needed


@pytest.fixture(scope="session")
def cluster():
    reason = check_environment(nodes_needed())
    if reason:
        unavailable(reason)
    c = Cluster(nodes_needed(), Farm.partitions())
    try:
        c.start()
    except ClusterUnavailable as exc:
        pytest.fail(f"the emulated Slurm cluster did not start: {exc}", pytrace=False)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="session")
def farm(cluster):
    """The cluster with one producer job on the producer nodes, registered in a rendezvous directory."""
    f = Farm(cluster)
    try:
        f.start_producers(PRODUCER_NODES)
        yield f
    finally:
        f.close()
