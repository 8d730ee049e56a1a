"""Geometry, frames, seeding and digits files (torch-free pieces)."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from pxdbg.shared import geometry
from pxdbg.shared.digitsfile import DigitsFile, DigitsFileError, DigitsWriter, write_digits
from pxdbg.shared.frame import FrameError, SparseFrame
from pxdbg.shared.seeding import check_seed, frame_rng, seed_from_framework_seed


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
