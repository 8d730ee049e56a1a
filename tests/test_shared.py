"""Geometry, frames, seeding and digits files (torch-free pieces)."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import struct
import subprocess
import sys
import threading
import zipfile

import numpy as np
import pytest

from pxdbg.shared import geometry
from pxdbg.shared.cpus import CpuBudget, cpu_budget, usable_cpus
from pxdbg.shared.digitsfile import DigitsFile, DigitsFileError, DigitsWriter, write_digits
from pxdbg.shared.errors import ConfigError
from pxdbg.shared.frame import FrameError, SparseFrame
from pxdbg.shared.histogram import BucketHistogram, SharedHistogram, log_bounds
from pxdbg.shared.seeding import check_seed, frame_rng, seed_from_framework_seed
from pxdbg.shared.sparselog import is_logged, warn_sparsely
from pxdbg.shared.validators import count_argument, positive_int, positive_seconds, seconds_argument


def test_sensor_order_and_vxd_ids():
    assert geometry.SENSORS[0] == (1, 1, 1)
    assert geometry.SENSORS[1] == (1, 1, 2)
    assert geometry.SENSORS[2] == (1, 2, 1)
    assert geometry.SENSORS[15] == (1, 8, 2)
    assert geometry.SENSORS[16] == (2, 1, 1)
    assert geometry.SENSORS[39] == (2, 12, 2)
    # VxdID: layer << 13 | ladder << 8 | sensor << 5
    assert geometry.VXD_IDS[0] == (1 << 13) | (1 << 8) | (1 << 5) == 8480
    assert geometry.VXD_IDS[39] == (2 << 13) | (12 << 8) | (2 << 5)
    assert geometry.split_vxd_id(int(geometry.VXD_IDS[17])) == (2, 1, 2, 0)
    assert geometry.sensor_index(2, 12, 2) == 39
    assert len(set(geometry.VXD_IDS.tolist())) == 40
    with pytest.raises(ValueError, match="no PXD sensor 3.1.1"):
        geometry.sensor_index(3, 1, 1)


def test_sparse_dense_round_trip(frame_factory):
    frame, dense = frame_factory(np.random.default_rng(1))
    assert frame.sensor.dtype == np.uint8 and frame.u.dtype == np.uint8
    assert frame.v.dtype == np.uint16 and frame.charge.dtype == np.uint8
    assert np.array_equal(frame.to_dense(), dense)
    assert SparseFrame.from_dense(frame.to_dense()) == frame
    frame.validate()
    assert frame.n_digits == np.count_nonzero(dense)
    # the corner pixels map to the right indices
    corner = np.zeros((40, 250, 768), np.uint8)
    corner[39, 249, 767] = 255
    corner[0, 0, 0] = 1
    f = SparseFrame.from_dense(corner)
    assert f.sensor.tolist() == [0, 39] and f.u.tolist() == [0, 249] and f.v.tolist() == [0, 767]
    assert f.charge.tolist() == [1, 255]


def test_from_pixels_adds_repeated_pixels_and_clips():
    f = SparseFrame.from_pixels(
        np.array([3, 0, 3]), np.array([5, 1, 5]), np.array([700, 2, 700]), np.array([200, 9, 100])
    )
    assert f.sensor.tolist() == [0, 3] and f.v.tolist() == [2, 700] and f.charge.tolist() == [9, 255]
    with pytest.raises(FrameError, match="more than once"):
        SparseFrame.from_pixels(np.array([1, 1]), np.array([1, 1]), np.array([1, 1]), np.array([1, 1]), merge="error")


def test_validate_rejects_bad_frames():
    ok = SparseFrame(
        np.array([0, 0], np.uint8), np.array([0, 0], np.uint8), np.array([1, 2], np.uint16), np.array([5, 6], np.uint8)
    )
    ok.validate()
    with pytest.raises(FrameError, match="canonical"):
        SparseFrame(ok.sensor, ok.u, ok.v[::-1].copy(), ok.charge).validate()
    with pytest.raises(FrameError, match="outside"):
        SparseFrame(ok.sensor, ok.u, np.array([1, 768], np.uint16), ok.charge).validate()
    with pytest.raises(FrameError, match="charge 0"):
        SparseFrame(ok.sensor, ok.u, ok.v, np.array([0, 1], np.uint8)).validate()
    with pytest.raises(FrameError, match="uint16"):
        SparseFrame(ok.sensor, ok.u, ok.v.astype(np.int32), ok.charge).validate()
    with pytest.raises(FrameError, match="dense frame"):
        SparseFrame.from_dense(np.zeros((40, 250, 767), np.uint8))


def test_framework_seed_rule():
    # the seed document's rule, computed independently: sha512(str(seed)), first 8 bytes, signed big-endian
    for fw in (0, 12345, "abc"):
        expect = struct.unpack(">q", hashlib.sha512(str(fw).encode()).digest()[:8])[0]
        assert seed_from_framework_seed(fw) == expect
    assert check_seed(-(2**63)) == -(2**63)
    with pytest.raises(ValueError, match="2\\*\\*63"):
        check_seed(2**63)
    with pytest.raises(TypeError):
        check_seed("1")


def test_frame_streams_depend_on_seed_and_index_only():
    a = frame_rng(7, 3).standard_normal(5)
    assert np.array_equal(a, frame_rng(7, 3).standard_normal(5))
    assert not np.array_equal(a, frame_rng(7, 4).standard_normal(5))
    assert not np.array_equal(a, frame_rng(8, 3).standard_normal(5))
    # negative seeds are valid and distinct from their unsigned twin's neighbours
    assert not np.array_equal(frame_rng(-1, 0).random(3), frame_rng(1, 0).random(3))


def test_digits_file_round_trip(tmp_path, frame_factory):
    rng = np.random.default_rng(2)
    frames = [frame_factory(rng, occ)[0] for occ in (0.0, 0.01, 0.002)]
    path = write_digits(tmp_path / "d.npz", frames, {"model": "x", "seed": -5})
    f = DigitsFile(path)
    assert f.n_events == 3 and f.meta["model"] == "x" and f.meta["seed"] == -5
    assert "pxdbg_version" in f.meta
    assert all(a == b for a, b in zip(f, frames))
    assert f.meta["format"] == "pxdbg-digits-2"
    # plain numpy opens it without pickle: offsets and meta as arrays, the columns as zstd bytes
    with np.load(path, allow_pickle=False) as npz:
        assert npz["offsets"].dtype == np.int64 and npz["offsets"].tolist()[0] == 0
        assert npz["offsets"][-1] == sum(fr.n_digits for fr in frames)
        assert json.loads(str(npz["meta"]))["model"] == "x"
    # the uncompressed format: every column a plain array
    raw = write_digits(tmp_path / "raw.npz", frames, {"model": "x"}, compress=False)
    with np.load(raw, allow_pickle=False) as npz:
        assert npz["v"].dtype == np.uint16 and npz["v"].size == sum(fr.n_digits for fr in frames)
    assert all(a == b for a, b in zip(DigitsFile(raw), frames)) and DigitsFile(raw).format == "pxdbg-digits-1"
    assert not list(tmp_path.glob(".pxdbg-spool-*")), "the spool directory must be removed"


def test_digits_writer_leaves_nothing_on_error(tmp_path, frame_factory):
    out = tmp_path / "d.npz"
    with pytest.raises(RuntimeError):
        with DigitsWriter(out) as w:
            w.append(frame_factory(np.random.default_rng(0))[0])
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_digits_file_errors(tmp_path):
    with pytest.raises(DigitsFileError, match="no digits file"):
        DigitsFile(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DigitsFileError, match="cannot read"):
        DigitsFile(bad)
    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(3))
    with pytest.raises(DigitsFileError, match="missing"):
        DigitsFile(other)
    inconsistent = tmp_path / "inc.npz"
    np.savez(
        inconsistent,
        offsets=np.array([0, 5], np.int64),
        sensor=np.zeros(4, np.uint8),
        u=np.zeros(4, np.uint8),
        v=np.zeros(4, np.uint16),
        charge=np.ones(4, np.uint8),
        meta=np.array("{}"),
    )
    with pytest.raises(DigitsFileError, match="offsets\\[-1\\]=5"):
        DigitsFile(inconsistent)
    with pytest.raises(DigitsFileError, match=".npz"):
        DigitsWriter(tmp_path / "x.root")
    assert zipfile.is_zipfile(other)


def test_shared_and_consumer_do_not_import_torch():
    code = (
        "import sys; import pxdbg.shared.protocol, pxdbg.shared.digitsfile, pxdbg.shared.payloads, "
        "pxdbg.consumer, pxdbg.cli; assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- usable CPUs: affinity within the cgroup quota -----------------------------------------------------------------
def _fake_cgroup(root, files: dict[str, str]):
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture
def four_affinity_cpus(monkeypatch):
    """This process may run on 4 CPUs, whatever the machine has."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)


def test_usable_cpus_without_a_quota_is_the_affinity_mask(tmp_path, four_affinity_cpus):
    assert usable_cpus(tmp_path) == 4  # no cgroup files at all
    v2 = _fake_cgroup(tmp_path, {"sys/fs/cgroup/cgroup.controllers": "cpu", "sys/fs/cgroup/cpu.max": "max 100000\n"})
    assert cpu_budget(v2) == CpuBudget(affinity=4, quota=None)
    assert usable_cpus(v2) == 4


def test_usable_cpus_honours_a_cgroup_v2_quota_on_the_own_cgroup_and_above(tmp_path, four_affinity_cpus):
    root = _fake_cgroup(
        tmp_path,
        {
            "sys/fs/cgroup/cgroup.controllers": "cpu",
            "proc/self/cgroup": "0::/job/step\n",
            "sys/fs/cgroup/job/cpu.max": "300000 100000\n",  # 3 CPUs for the job
            "sys/fs/cgroup/job/step/cpu.max": "250000 100000\n",  # 2.5 for this step: the tightest
        },
    )
    budget = cpu_budget(root)
    assert budget.quota == 2.5 and budget.usable == 2 and not budget.ignored
    # a quota above the affinity mask leaves the mask
    (root / "sys/fs/cgroup/job/step/cpu.max").write_text("800000 100000\n")
    (root / "sys/fs/cgroup/job/cpu.max").write_text("max 100000\n")
    assert usable_cpus(root) == 4
    # a quota below one CPU still runs one thread
    (root / "sys/fs/cgroup/job/step/cpu.max").write_text("50000 100000\n")
    assert usable_cpus(root) == 1


def test_usable_cpus_honours_a_cgroup_v1_quota(tmp_path, four_affinity_cpus):
    d = "sys/fs/cgroup/cpu,cpuacct/"
    root = _fake_cgroup(tmp_path, {d + "cpu.cfs_quota_us": "200000\n", d + "cpu.cfs_period_us": "100000\n"})
    assert usable_cpus(root) == 2
    (root / d / "cpu.cfs_quota_us").write_text("-1\n")  # v1's "unlimited"
    assert cpu_budget(root) == CpuBudget(affinity=4, quota=None)
    # a process in a nested v1 cgroup (a batch job on a host): its own level and those above count
    nested = _fake_cgroup(
        tmp_path / "nested",
        {
            "proc/self/cgroup": "5:memory:/job\n4:cpu,cpuacct:/slurm/job_7\n0::/\n",
            d + "cpu.cfs_quota_us": "-1\n",
            d + "cpu.cfs_period_us": "100000\n",
            d + "slurm/cpu.cfs_quota_us": "300000\n",
            d + "slurm/cpu.cfs_period_us": "100000\n",
            d + "slurm/job_7/cpu.cfs_quota_us": "-1\n",
            d + "slurm/job_7/cpu.cfs_period_us": "100000\n",
        },
    )
    assert cpu_budget(nested).quota == 3.0 and usable_cpus(nested) == 3
    # a container without its own cgroup namespace names a path not mounted inside it: the mount's root counts
    (nested / "proc/self/cgroup").write_text("4:cpu,cpuacct:/docker/abc\n")
    (nested / d / "cpu.cfs_quota_us").write_text("100000\n")
    assert usable_cpus(nested) == 1 and not cpu_budget(nested).ignored


@pytest.mark.parametrize(
    "cpu_max",
    ["garbage", "100000", "abc 100000", "0 100000", "-5 100000", "100000 0", "\x00\xff" * 3000, ""],
    ids=["word", "one-field", "not-int", "zero", "negative", "zero-period", "huge-binary", "empty"],
)
def test_a_garbage_cgroup_file_is_ignored_with_a_reason(tmp_path, four_affinity_cpus, caplog, cpu_max):
    root = _fake_cgroup(tmp_path, {"sys/fs/cgroup/cgroup.controllers": "cpu", "sys/fs/cgroup/cpu.max": cpu_max})
    budget = cpu_budget(root)
    assert budget.quota is None and budget.usable == 4
    assert len(budget.ignored) == 1 and "cpu.max" in budget.ignored[0]
    with caplog.at_level(logging.WARNING, logger="pxdbg.cpus"):
        assert usable_cpus(root) == 4
    assert "counting the affinity mask only" in caplog.text


def test_a_bad_cgroup_entry_or_v1_file_is_ignored_with_a_reason(tmp_path, four_affinity_cpus):
    root = _fake_cgroup(
        tmp_path,
        {
            "sys/fs/cgroup/cgroup.controllers": "cpu",
            "proc/self/cgroup": "0::/../../etc\n",  # a path that climbs out of the mount is not followed
            "sys/fs/cgroup/cpu.max": "100000 100000\n",
        },
    )
    budget = cpu_budget(root)
    assert budget.usable == 1 and "outside the cgroup mount" in budget.ignored[0]
    d = "sys/fs/cgroup/cpu/"
    v1 = _fake_cgroup(tmp_path / "v1", {d + "cpu.cfs_quota_us": "lots\n", d + "cpu.cfs_period_us": "100000\n"})
    assert cpu_budget(v1).quota is None and "not an integer" in cpu_budget(v1).ignored[0]
    unreadable = _fake_cgroup(tmp_path / "v2dir", {"sys/fs/cgroup/cgroup.controllers": "cpu"})
    (unreadable / "sys/fs/cgroup/cpu.max").mkdir()  # reading a directory fails with an OSError
    assert cpu_budget(unreadable).usable == 4 and "cannot read" in cpu_budget(unreadable).ignored[0]


def test_engine_and_local_workers_use_the_quota(tmp_path, monkeypatch, four_affinity_cpus):
    """Both callers count CPUs the same way: under a quota of 2 CPUs, one GAN producer gets 2 threads and two
    local workers 1 thread each (not 2 each, which oversubscribed a CPU-limited container)."""
    from pxdbg.consumer import workers
    from pxdbg.models import engine
    from pxdbg.shared import cpus
    from pxdbg.shared.registry import get
    from pxdbg.shared.spec import ProducerSpec

    root = _fake_cgroup(tmp_path, {"sys/fs/cgroup/cgroup.controllers": "cpu", "sys/fs/cgroup/cpu.max": "200000 100000"})
    real = cpus.usable_cpus
    monkeypatch.setattr(engine, "usable_cpus", lambda: real(root))
    monkeypatch.setattr(workers, "usable_cpus", lambda: real(root))
    assert engine.recommended_threads(get("convnet"), "cpu") == 2
    # a real process in the producer's place, which records the command line it was given and exits
    argv_log = tmp_path / "argv"
    fake_python = tmp_path / "python"
    fake_python.write_text(f'#!/bin/sh\necho "$@" >> {argv_log}\n')
    fake_python.chmod(0o755)
    local = workers.LocalWorkers(2, ProducerSpec(model="convnet", device="cpu"), python=str(fake_python))
    try:
        assert local.spec.threads == 1
        for w in local.workers:
            w.process.wait(timeout=30)
        lines = argv_log.read_text().splitlines()
        assert len(lines) == 2 and all(" --threads 1 " in line + " " for line in lines)
    finally:
        local.close(timeout=5)


# -- sparse warnings, bucket histograms, setting checks -------------------------------------------------------------
def test_warn_sparsely_logs_the_first_few_then_one_in_every_n(caplog):
    log = logging.getLogger("pxdbg.test.sparse")
    with caplog.at_level(logging.WARNING, logger="pxdbg.test.sparse"):
        logged = [n for n in range(1, 3001) if warn_sparsely(log, n, "bad thing (%d so far)", n)]
    assert logged == [1, 2, 3, 4, 5, 1000, 2000, 3000]
    assert [r.getMessage() for r in caplog.records] == [f"bad thing ({n} so far)" for n in logged]
    assert [n for n in range(1, 301) if is_logged(n, first=3, every=100)] == [1, 2, 3, 100, 200, 300]


def test_bucket_histogram_counts_sums_and_percentiles():
    h = BucketHistogram([0.1, 1.0])
    assert math.isnan(h.percentile(50)) and h.max == 0.0
    for v in (0.05, 0.1, 0.5, 7.0, 7.0):  # a value on a bound falls into that bound's bucket
        h.observe(v)
    assert h.snapshot() == {"buckets": [0.1, 1.0], "counts": [2, 3, 5], "sum": pytest.approx(14.65), "count": 5}
    assert h.percentile(40) == 0.1 and h.percentile(60) == 1.0 and h.percentile(100) == 7.0
    small = BucketHistogram([10.0])
    small.observe(2.0)
    assert small.percentile(50) == 2.0  # a bucket's bound, but never above the largest value seen
    with pytest.raises(ValueError, match="0..100"):
        h.percentile(101)
    with pytest.raises(ValueError, match="increase"):
        BucketHistogram([1.0, 1.0])


def test_bucket_histogram_memory_is_flat_and_log_bounds_are_even_per_decade():
    bounds = log_bounds(1e-6, 1e3, 20)
    assert len(bounds) == 9 * 20 + 1 and bounds[0] == 1e-6 and bounds[-1] == pytest.approx(1e3)
    assert all(b / a == pytest.approx(10 ** (1 / 20)) for a, b in zip(bounds, bounds[1:]))
    h = BucketHistogram(bounds)
    rng = np.random.default_rng(3)
    waits = rng.lognormal(-6, 1, 20_000)
    for w in waits:
        h.observe(float(w))
    assert len(h.counts) == len(bounds) + 1 and h.count == 20_000
    exact = float(np.percentile(waits, 99))
    assert exact <= h.percentile(99) <= exact * 10 ** (1 / 20) * 1.0001  # within one bucket's width
    with pytest.raises(ValueError):
        log_bounds(0, 1, 10)


def test_shared_histogram_loses_no_observation_across_threads():
    h = SharedHistogram([1.0, 2.0])

    def write():
        for _ in range(5000):
            h.observe(1.5)

    threads = [threading.Thread(target=write) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert h.snapshot()["counts"] == [0, 20_000, 20_000] and h.percentile(50) == 1.5


def test_consumer_and_producer_histograms_are_the_shared_one():
    from pxdbg.consumer.stats import EDGES, ClientStats, WaitHistogram
    from pxdbg.producer.stats import ProducerStats

    assert isinstance(WaitHistogram(), BucketHistogram) and WaitHistogram().bounds == EDGES
    stats = ClientStats(warmup=1)
    for s in (5.0, 0.001, 0.002):
        stats.record_wait(s)
    assert stats.events == 3 and stats.wait_max_s == 5.0 and stats.wait_percentile(100) <= 0.002 * 1.13
    assert stats.wait_percentile(100, warm=False) == 5.0
    assert all(isinstance(h, SharedHistogram) for h in ProducerStats().histograms.values())


@pytest.mark.parametrize("value", [0, -1, 0.0, math.nan, math.inf, True, "1", None])
def test_positive_seconds_rejects_what_is_no_duration(value):
    with pytest.raises(ConfigError, match=r"^timeout must be a positive number of seconds, got "):
        positive_seconds("timeout", value)


def test_setting_checks_accept_good_values_and_name_the_setting():
    assert positive_seconds("timeout", 2) == 2.0 and isinstance(positive_seconds("t", 2), float)
    assert positive_int("workers", 3) == 3 and positive_int("batch", 4096, limit=4096) == 4096
    for bad in (0, -2, 1.5, True, "3"):
        with pytest.raises(ConfigError, match=r"^workers must be a positive integer, got "):
            positive_int("workers", bad)
    with pytest.raises(ConfigError, match=r"^batch must be 1\.\.4096, got 4097$"):
        positive_int("batch", 4097, limit=4096)
    assert issubclass(ConfigError, ValueError)  # callers that caught ValueError still do


def test_argparse_types_give_one_line_errors(capsys):
    parser = argparse.ArgumentParser(prog="pxdbg")
    parser.add_argument("--timeout", type=seconds_argument)
    parser.add_argument("--workers", type=count_argument)
    args = parser.parse_args(["--timeout", "0.5", "--workers", "2"])
    assert args.timeout == 0.5 and args.workers == 2
    for argv, why in (
        (["--timeout", "nan"], "must be a positive number of seconds, got 'nan'"),
        (["--timeout", "-1"], "must be a positive number of seconds, got '-1'"),
        (["--timeout", "soon"], "must be a positive number of seconds, got 'soon'"),
        (["--workers", "0"], "must be a whole number of at least 1, got '0'"),
        (["--workers", "two"], "must be a whole number of at least 1, got 'two'"),
    ):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
        assert why in capsys.readouterr().err


def test_field_checks_say_why_without_quoting_the_value():
    from pxdbg.shared import fieldchecks as fc

    secret = "s3cr3t-" * 10
    assert fc.integer(0, 9)(5) is None and fc.integer(0, 9)(True) == "an integer, got bool"
    assert fc.integer(0, 9)(10) == "an integer in [0, 9], got one outside"
    assert fc.text(4)(secret) == "a string of at most 4 characters, got 70"
    assert fc.list_of(fc.integer(0, 1), 2, 1)([]) == "a list of 1..2 items, got 0"
    assert fc.list_of(fc.integer(0, 1), 2)([secret]) == "a list whose items are each an integer, got str"
    assert fc.map_of_scalars(4)({"k": {"nested": secret}}) == "a map of scalars and short strings"
    assert fc.map_of_scalars(4)({secret: 1}) == "a map with short string keys"
    assert fc.nullable(fc.boolean)(None) is None and fc.nullable(fc.boolean)(secret) == "true or false, got str"
    assert fc.number(1.5) is None and fc.number(False) == "a number, got bool" and fc.any_map([]) == "a map, got list"
    for check in (fc.integer(0, 1), fc.text(4), fc.boolean, fc.number, fc.any_map, fc.map_of_scalars(1)):
        assert "s3cr3t" not in (check(secret) or "") + (check({secret: secret, "b": 1}) or "")
