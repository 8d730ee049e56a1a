"""The digits file's compressed format (blocks compressed during the run, identical whatever the timing) and what a
reader refuses: damaged columns and spools, zip bombs, absurd shapes, bad stream metadata."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from files_helpers import frames_equal, parametric_frames, pxdbg, spool_of, write_digits_file
from pxdbg.models import load
from pxdbg.shared.digitsfile import DigitsFile, DigitsFileError, DigitsWriter

pytestmark = pytest.mark.timeout(240)


# -- the compressed format, and what a reader refuses ----------------------------------------------------------
def _stream_meta(seed: int) -> dict:
    return {**load("parametric").identity.as_dict(), "seed": seed, "first_frame": 0}


def test_the_compressed_file_is_near_the_wire_size_and_old_files_still_read(tmp_path):
    from pxdbg.shared import codecs
    from pxdbg.shared.digitsfile import write_digits

    frames = parametric_frames(12)
    new = write_digits(tmp_path / "new.npz", frames, {"seed": 77})
    old = write_digits(tmp_path / "old.npz", frames, {"seed": 77}, compress=False)  # as every file before
    assert DigitsFile(new).format == "pxdbg-digits-2" and DigitsFile(old).format == "pxdbg-digits-1"
    assert frames_equal(DigitsFile(new), DigitsFile(old)) and all(a == b for a, b in zip(DigitsFile(new), frames))
    wire = next(r for r in codecs.measure(frames, ["zstd"], repeat=1) if r["codec"] == "zstd")["bytes_per_digit"]
    digits = sum(f.n_digits for f in frames)
    ratio = new.stat().st_size / digits / wire
    print(f"\n{new.stat().st_size / digits:.2f} bytes per digit on disk, {wire:.2f} on the wire: {ratio:.2f}x")
    assert ratio <= 1.2 and old.stat().st_size > 2.5 * new.stat().st_size


def _zip_members(path: Path) -> dict[str, bytes]:
    import zipfile

    with zipfile.ZipFile(path) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def test_columns_are_compressed_during_the_run_and_the_file_never_depends_on_the_timing(tmp_path, monkeypatch):
    """The background compressor works a block at a time while events are appended; a slow compressor, or none
    before close, gives the same bytes, and the members are np.load-able and plain zstd frames."""
    import zipfile

    import zstandard

    from pxdbg.shared import digitscompressor
    from pxdbg.shared.digitscodec import BLOCK_DIGITS, encode_block

    frames = parametric_frames(40)
    digits = sum(f.n_digits for f in frames)
    assert digits > 2 * BLOCK_DIGITS  # two whole blocks and a tail
    meta = _stream_meta(77)
    fast = tmp_path / "fast.npz"
    w = DigitsWriter(fast, meta)
    for f in frames:
        w.append(f)
    blocks = spool_of(fast) / "v.zst"
    deadline = time.monotonic() + 60
    while blocks.stat().st_size == 0 and time.monotonic() < deadline:  # compressed before close is called
        time.sleep(0.01)
    assert blocks.stat().st_size > 0
    w.close()

    real = digitscompressor.BackgroundCompressor._compress

    def slow(*args):
        time.sleep(0.05)
        return real(*args)

    monkeypatch.setattr(digitscompressor.BackgroundCompressor, "_compress", staticmethod(slow))
    slowed = tmp_path / "slow.npz"
    with DigitsWriter(slowed, meta) as w:
        for f in frames:
            w.append(f)
    assert fast.read_bytes() == slowed.read_bytes()
    assert all(a == b for a, b in zip(DigitsFile(fast), frames))

    with np.load(fast) as z:  # no pickle: offsets and meta as arrays, the columns as their zstd bytes
        assert int(z["offsets"][-1]) == digits and json.loads(str(z["meta"]))["format"] == "pxdbg-digits-2"
    v = np.concatenate([f.v for f in frames])
    with zipfile.ZipFile(fast) as zf, zf.open("v.zst") as member:
        transformed = zstandard.ZstdDecompressor().stream_reader(member, read_across_frames=True).read()
    prev, expected = 0, []
    for a in range(0, digits, BLOCK_DIGITS):
        expected.append(encode_block("v", v[a : a + BLOCK_DIGITS], prev).tobytes())
        prev = int(v[a + BLOCK_DIGITS - 1]) if a + BLOCK_DIGITS <= digits else prev
    assert transformed == b"".join(expected)  # zstd -d gives the transformed column, as the docs say


def test_a_compressor_failure_is_one_line_at_the_next_write_and_resume_recovers(tmp_path, monkeypatch):
    import errno

    from pxdbg.shared import digitscompressor

    frames = parametric_frames(40)
    meta = _stream_meta(77)
    reference = _zip_members(write_digits_to(tmp_path / "ref.npz", frames, meta))

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(digitscompressor.BackgroundCompressor, "_compress", staticmethod(full))
    out = tmp_path / "fails.npz"
    w = DigitsWriter(out, meta)
    with pytest.raises(DigitsFileError) as failed:
        for f in frames:
            w.append(f)
        w.close()
    line = str(failed.value)
    assert "\n" not in line and "No space left on device" in line and "--resume" in line and str(out) in line
    with pytest.raises(DigitsFileError, match="--resume"):  # a stopped run keeps what it has: not here
        w.close(complete=False)
    assert not out.exists() and spool_of(out).is_dir() and not any(t.is_alive() for t in w._compressor._threads)
    monkeypatch.undo()
    r = DigitsWriter(out, meta, resume=True)
    for f in frames[r.n_events :]:
        r.append(f)
    r.close()
    assert _zip_members(out) == reference


def test_a_resumed_spool_with_torn_compressed_blocks_gives_the_unbroken_file(tmp_path):
    """A kill can leave a half-written block in a column's .zst; resume makes the blocks again from the raw
    columns, so the output is byte for byte the unbroken one."""
    frames = parametric_frames(40)
    unbroken = tmp_path / "unbroken.npz"
    with DigitsWriter(unbroken, _stream_meta(77)) as w:
        for f in frames:
            w.append(f)
    out = tmp_path / "k.npz"
    _killed_writer(out, 77, frames[:30])
    for name in ("v", "u"):
        blocks = spool_of(out) / f"{name}.zst"
        blocks.write_bytes(blocks.read_bytes()[:-7] or b"\x28\xb5")
    r = DigitsWriter(out, _stream_meta(77), resume=True)
    assert r.n_events == 30
    for f in frames[30:]:
        r.append(f)
    r.close()
    assert out.read_bytes() == unbroken.read_bytes()


def test_a_column_stored_as_one_zstd_frame_still_reads(tmp_path):
    """Files written before the background compression hold each column as a single frame."""
    import zipfile

    import zstandard

    from pxdbg.shared.digitscodec import BLOCK_DIGITS, encode_block

    frames = parametric_frames(20)
    offsets = np.concatenate([[0], np.cumsum([f.n_digits for f in frames])]).astype(np.int64)
    old = tmp_path / "one-frame.npz"
    cctx = zstandard.ZstdCompressor(level=1)
    with zipfile.ZipFile(old, "w") as zf:
        with zf.open("offsets.npy", "w") as m:
            np.lib.format.write_array(m, offsets)
        with zf.open("meta.npy", "w") as m:
            np.lib.format.write_array(m, np.array(json.dumps({"seed": 77, "format": "pxdbg-digits-2"})))
        for name in ("sensor", "u", "v", "charge"):
            col = np.concatenate([getattr(f, name) for f in frames])
            prev, parts = 0, []
            for a in range(0, col.size, BLOCK_DIGITS):
                parts.append(encode_block(name, col[a : a + BLOCK_DIGITS], prev).tobytes())
                prev = int(col[min(a + BLOCK_DIGITS, col.size) - 1])
            zf.writestr(f"{name}.zst", cctx.compress(b"".join(parts)))
    assert all(a == b for a, b in zip(DigitsFile(old), frames)) and DigitsFile(old).n_events == 20


def _zstd_frame(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor().compress(data)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda blob: blob[: len(blob) // 2], "holds .* bytes, its digits are"),
        (lambda blob: blob + _zstd_frame(b"x" * 99), "holds more than its"),
        (lambda blob: blob[:50] + bytes(len(blob) - 50), "is damaged"),
    ],
    ids=["cut short", "one frame too many", "zeroed"],
)
def test_a_damaged_compressed_column_is_one_line(tmp_path, change, message):
    good = write_digits_to(tmp_path / "good.npz", parametric_frames(20), _stream_meta(77))
    members = _zip_members(good)
    members["v.zst"] = change(members["v.zst"])
    bad = _zip(tmp_path / "bad.npz", members)
    with pytest.raises(DigitsFileError, match=r"bad\.npz: member v\.zst " + message) as raised:
        DigitsFile(bad)
    assert "\n" not in str(raised.value)


def test_a_writer_dropped_unclosed_stops_its_compressor_threads(tmp_path):
    import gc

    w = DigitsWriter(tmp_path / "dropped.npz", _stream_meta(77))
    w.append(parametric_frames(1)[0])
    threads = list(w._compressor._threads)
    assert all(t.is_alive() for t in threads)
    for f in (*w._files.values(), w._crcs, w._counts):
        f.close()
    del w, f
    gc.collect()
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads)


def write_digits_to(path: Path, frames, meta: dict) -> Path:
    with DigitsWriter(path, meta) as w:
        for f in frames:
            w.append(f)
    return path


def _killed_writer(out: Path, seed: int, frames) -> None:
    """A writer that appended ``frames`` and was never closed: the spool a SIGKILL leaves."""
    w = DigitsWriter(out, _stream_meta(seed))
    for f in frames:
        w.append(f)
    for f in (*w._files.values(), w._counts, *([w._crcs] if hasattr(w, "_crcs") else [])):
        f.close()
    w._compressor.stop()  # its threads would die with the process


@pytest.mark.parametrize("damage", ["negative count", "swapped counts", "u 255", "v 65535", "sensor 200"])
def test_resume_from_a_damaged_spool_cuts_the_damage_and_never_writes_wrong_frames(tmp_path, damage):
    frames = load("parametric").frames(77, range(8))
    out = tmp_path / "d.npz"
    _killed_writer(out, 77, frames[:6])
    spool = spool_of(out)
    counts = np.fromfile(spool / "counts", np.int64)
    if damage == "negative count":
        counts[2] = -5
    elif damage == "swapped counts":
        assert counts[2] != counts[3]
        counts[2], counts[3] = counts[3], counts[2]
    else:
        name, value = damage.split()
        col = np.fromfile(spool / name, np.uint16 if name == "v" else np.uint8)
        col[int(counts[:3].sum()) + 5] = int(value)  # a digit of event 3
        col.tofile(spool / name)
    counts.tofile(spool / "counts")
    proc = pxdbg("generate", "--events", "8", "--seed", "77", "--out", str(out), "--resume", check=False)
    assert proc.returncode == 0, proc.stderr
    warned = [line for line in proc.stderr.splitlines() if "of its spool is damaged" in line]
    assert len(warned) == 1 and "Traceback" not in proc.stderr, proc.stderr
    back = DigitsFile(out)
    assert back.n_events == 8 and all(a == b for a, b in zip(back, frames)), "the damaged events were kept"


def _zip(path: Path, members: dict[str, bytes], deflated: dict[str, int] | None = None) -> Path:
    """A zip with ``members`` stored and, for ``deflated``, members of that many zero bytes deflated."""
    import zipfile

    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            if name not in (deflated or {}):
                zf.writestr(name, data)
        for name, size in (deflated or {}).items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as m:
                block = bytes(1 << 22)
                for _ in range(size // len(block)):
                    m.write(block)
    return path


def _npy(arr: np.ndarray, shape=None) -> bytes:
    import io

    buf = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(arr.dtype), "fortran_order": False, "shape": shape or arr.shape}
    np.lib.format.write_array_header_1_0(buf, header)
    buf.write(arr.tobytes())
    return buf.getvalue()


def test_members_that_inflate_to_gigabytes_or_declare_absurd_shapes_are_refused_before_reading(tmp_path):
    import resource

    good = write_digits_file(tmp_path / "good.npz")
    import zipfile

    with zipfile.ZipFile(good) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    # a deflated 400 MB member beside the real ones: a ~0.4 MB file
    bomb = _zip(tmp_path / "bomb.npz", members, {"sensor.npy": 400 << 20})
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DigitsFileError, match=r"bomb\.npz: member sensor\.npy would inflate to 0\.4 GB"):
        DigitsFile(bomb)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 100_000, "it was inflated (kB of RSS)"
    absurd = dict(members)
    absurd["offsets.npy"] = _npy(np.zeros(2, np.int64), shape=(10**13,))
    with pytest.raises(DigitsFileError, match=r"absurd\.npz: member offsets\.npy declares shape \(10000000000000,\)"):
        DigitsFile(_zip(tmp_path / "absurd.npz", absurd))
    # the compressed format: offsets that claim 100 full frames and a zstd column of zeros (~25 kB for 768 MB)
    import zstandard

    from pxdbg.shared.geometry import FRAME_PIXELS

    n = 100 * FRAME_PIXELS
    cobj = zstandard.ZstdCompressor(level=1).compressobj(size=n)
    zeros, blob = bytes(FRAME_PIXELS), b""
    for _ in range(100):
        blob += cobj.compress(zeros)
    blob += cobj.flush()
    zst = {
        "offsets.npy": _npy(np.arange(101, dtype=np.int64) * FRAME_PIXELS),
        "meta.npy": _npy(np.array(json.dumps({"seed": 1}))),
        **{f"{c}.zst": blob for c in ("sensor", "u", "v", "charge")},
    }
    with pytest.raises(DigitsFileError, match=r"zbomb\.npz: member sensor\.zst would inflate to 0\.8 GB"):
        DigitsFile(_zip(tmp_path / "zbomb.npz", zst))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 100_000, "it was inflated (kB of RSS)"
    proc = pxdbg("join", str(tmp_path / "j.npz"), str(bomb), check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "bomb.npz" in proc.stderr, proc.stderr


def test_digits_files_are_validated_on_read(tmp_path):
    n = sum(f.n_digits for f in parametric_frames(2))
    cases = {
        "u": (dict(u=np.full(n, 255, np.uint8)), "u is 250 or more"),
        "sensor": (dict(sensor=np.full(n, 200, np.uint8)), "sensor is 40 or more"),
        "charge": (dict(charge=np.zeros(n, np.uint8)), "charge 0 ADC"),
        "order": (dict(v=np.zeros(n, np.uint16) + 3), "not in .sensor, u, v. order"),
    }
    for name, (columns, message) in cases.items():
        with pytest.raises(DigitsFileError, match=message):
            DigitsFile(write_digits_file(tmp_path / f"{name}.npz", **columns))
    with pytest.raises(DigitsFileError, match="meta is a JSON list"):
        DigitsFile(write_digits_file(tmp_path / "list.npz", meta=[1, 2]))
    root = tmp_path / "x.root"
    root.write_bytes(b"root" + bytes(100))
    with pytest.raises(DigitsFileError, match=r"x\.root is a ROOT file; DigitsFile reads digits files"):
        DigitsFile(root)
    # the commands that read them: one line, no traceback
    zero = write_digits_file(tmp_path / "zero.npz", charge=np.zeros(n, np.uint8))
    proc = pxdbg("calibrate", str(zero), "-o", str(tmp_path / "p.pt"), "-q", check=False)
    assert proc.returncode == 2 and "charge 0 ADC" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "p.pt").exists()


@pytest.mark.parametrize(
    "meta, message",
    [
        ({"seed": 77, "first_frame": "abc"}, "'first_frame' must be a frame index, got a str"),
        ({"seed": 77, "first_frame": 20.7}, "'first_frame' must be a frame index, got a float"),
        ({"first_frame": 0}, "names no stream seed"),
    ],
)
def test_join_refuses_parts_with_bad_stream_metadata_in_one_line(tmp_path, meta, message):
    good = write_digits_file(tmp_path / "a.npz")
    bad = write_digits_file(tmp_path / "b.npz", meta=meta)
    proc = pxdbg("join", str(tmp_path / "j.npz"), str(good), str(bad), check=False)
    assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert not (tmp_path / "j.npz").exists()
