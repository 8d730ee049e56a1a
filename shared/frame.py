"""One PXD frame (one event's 40 sensor images) in sparse and dense form.

Sparse form: one row per hit pixel ("digit") with the generator sensor index (uint8), u (uint8), v (uint16)
and charge (uint8, ADC, 1..255), 4 bytes per digit. Digits are kept in the *canonical order*, sorted by
(sensor, u, v) with no pixel twice: the order ``numpy.nonzero`` gives for the dense (40, 250, 768) array, so
sparse -> dense -> sparse is the identity and two frames are equal exactly when their arrays are equal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pxdbg.shared.geometry import FRAME_SHAPE, N_SENSORS, N_U, N_V, PIXELS_PER_SENSOR, VXD_IDS

SENSOR_DTYPE = np.dtype(np.uint8)
U_DTYPE = np.dtype(np.uint8)
V_DTYPE = np.dtype(np.uint16)
CHARGE_DTYPE = np.dtype(np.uint8)
BYTES_PER_DIGIT = SENSOR_DTYPE.itemsize + U_DTYPE.itemsize + V_DTYPE.itemsize + CHARGE_DTYPE.itemsize


class FrameError(ValueError):
    """A frame's arrays are inconsistent (wrong dtype, length, range or order)."""


@dataclass(frozen=True, eq=False)
class SparseFrame:
    """The digits of one frame in canonical order. Arrays may be read-only views of received buffers."""

    sensor: np.ndarray
    u: np.ndarray
    v: np.ndarray
    charge: np.ndarray

    @property
    def n_digits(self) -> int:
        return int(self.charge.shape[0])

    @property
    def nbytes(self) -> int:
        return self.n_digits * BYTES_PER_DIGIT

    def __len__(self) -> int:
        return self.n_digits

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SparseFrame):
            return NotImplemented
        return all(
            np.array_equal(a, b)
            for a, b in zip((self.sensor, self.u, self.v, self.charge), (other.sensor, other.u, other.v, other.charge))
        )

    __hash__ = None  # type: ignore[assignment]

    @classmethod
    def empty(cls) -> SparseFrame:
        return cls(np.empty(0, SENSOR_DTYPE), np.empty(0, U_DTYPE), np.empty(0, V_DTYPE), np.empty(0, CHARGE_DTYPE))

    @classmethod
    def from_dense(cls, dense: np.ndarray) -> SparseFrame:
        """Sparse digits of a (40, 250, 768) uint8 array (0 = no hit)."""
        dense = np.asarray(dense)
        if dense.shape != FRAME_SHAPE or dense.dtype != np.uint8:
            raise FrameError(f"a dense frame is a {FRAME_SHAPE} uint8 array, got {dense.shape} {dense.dtype}")
        flat = np.flatnonzero(dense)
        sensor, rest = np.divmod(flat, PIXELS_PER_SENSOR)
        u, v = np.divmod(rest, N_V)
        return cls(
            sensor.astype(SENSOR_DTYPE),
            u.astype(U_DTYPE),
            v.astype(V_DTYPE),
            dense.reshape(-1)[flat],
        )

    @classmethod
    def from_pixels(
        cls, sensor: np.ndarray, u: np.ndarray, v: np.ndarray, charge: np.ndarray, *, merge: str = "add"
    ) -> SparseFrame:
        """Canonical frame from unordered hits that may hit a pixel more than once.

        ``merge="add"`` adds the charges of repeated pixels (as charge deposits add in a pixel), clipped at
        255 ADC; ``merge="error"`` refuses repeats.
        """
        sensor = np.asarray(sensor)
        u = np.asarray(u)
        v = np.asarray(v)
        charge = np.asarray(charge)
        if not (sensor.shape == u.shape == v.shape == charge.shape) or sensor.ndim != 1:
            raise FrameError("sensor, u, v and charge must be 1-d arrays of one length")
        key = (sensor.astype(np.int64) * N_U + u) * N_V + v
        order = np.argsort(key, kind="stable")
        key = key[order]
        charge = charge[order].astype(np.int32)
        if key.size:
            starts = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1])))
            if starts.size != key.size:
                if merge == "error":
                    raise FrameError("a pixel appears more than once")
                charge = np.add.reduceat(charge, starts)
                key = key[starts]
        keep = charge > 0
        key = key[keep]
        charge = np.minimum(charge[keep], 255)
        s, rest = np.divmod(key, PIXELS_PER_SENSOR)
        uu, vv = np.divmod(rest, N_V)
        return cls(s.astype(SENSOR_DTYPE), uu.astype(U_DTYPE), vv.astype(V_DTYPE), charge.astype(CHARGE_DTYPE))

    def to_dense(self, out: np.ndarray | None = None) -> np.ndarray:
        """The (40, 250, 768) uint8 array of this frame (written into ``out`` when given)."""
        if out is None:
            out = np.zeros(FRAME_SHAPE, dtype=np.uint8)
        else:
            if out.shape != FRAME_SHAPE or out.dtype != np.uint8:
                raise FrameError(f"out must be a {FRAME_SHAPE} uint8 array")
            out.fill(0)
        out[self.sensor, self.u, self.v] = self.charge
        return out

    def vxd_ids(self) -> np.ndarray:
        """Belle II VxdID (uint16) of each digit's sensor."""
        return VXD_IDS[self.sensor]

    def sensor_counts(self) -> np.ndarray:
        """Number of digits per sensor (40 int64)."""
        return np.bincount(self.sensor, minlength=N_SENSORS)

    def validate(self) -> SparseFrame:
        """Check dtypes, lengths, ranges and canonical order; raise :class:`FrameError` if anything is off."""
        arrays = {"sensor": self.sensor, "u": self.u, "v": self.v, "charge": self.charge}
        dtypes = {"sensor": SENSOR_DTYPE, "u": U_DTYPE, "v": V_DTYPE, "charge": CHARGE_DTYPE}
        for name, arr in arrays.items():
            if arr.ndim != 1 or arr.dtype != dtypes[name]:
                raise FrameError(f"{name} must be a 1-d {dtypes[name]} array, got {arr.ndim}-d {arr.dtype}")
        n = self.charge.shape[0]
        if any(arr.shape[0] != n for arr in arrays.values()):
            raise FrameError("sensor, u, v and charge differ in length")
        if n == 0:
            return self
        if self.sensor.max() >= N_SENSORS or self.u.max() >= N_U or self.v.max() >= N_V:
            raise FrameError("a digit lies outside the 40 x 250 x 768 pixel range")
        if self.charge.min() == 0:
            raise FrameError("a digit has charge 0 (zero means no hit)")
        key = (self.sensor.astype(np.int64) * N_U + self.u) * N_V + self.v
        if n > 1 and not bool(np.all(key[1:] > key[:-1])):
            raise FrameError("digits are not in canonical (sensor, u, v) order or a pixel appears twice")
        return self
