"""PXD sensor geometry as the generator models see it.

Every model produces 40 images in one fixed order (the *generator index*): index 0..15 are layer 1,
ladders 1..8, sensors 1 and 2; index 16..39 are layer 2, ladders 1..12, sensors 1 and 2. Every sensor is
treated as a matrix of 250 (u) x 768 (v) pixels.
"""

from __future__ import annotations

import numpy as np

N_SENSORS = 40
N_U = 250
N_V = 768
PIXELS_PER_SENSOR = N_U * N_V
FRAME_SHAPE = (N_SENSORS, N_U, N_V)
FRAME_PIXELS = N_SENSORS * PIXELS_PER_SENSOR
LADDERS_PER_LAYER = {1: 8, 2: 12}


def _sensor_table() -> tuple[tuple[int, int, int], ...]:
    rows = []
    for layer in (1, 2):
        for ladder in range(1, LADDERS_PER_LAYER[layer] + 1):
            for sensor in (1, 2):
                rows.append((layer, ladder, sensor))
    return tuple(rows)


#: (layer, ladder, sensor) for each generator index.
SENSORS: tuple[tuple[int, int, int], ...] = _sensor_table()
assert len(SENSORS) == N_SENSORS


def vxd_id(layer: int, ladder: int, sensor: int, segment: int = 0) -> int:
    """Belle II ``VxdID`` as a 16-bit integer: layer (3 bits), ladder (5), sensor (3), segment (5)."""
    if not (0 <= layer < 8 and 0 <= ladder < 32 and 0 <= sensor < 8 and 0 <= segment < 32):
        raise ValueError(f"VxdID field out of range: layer={layer} ladder={ladder} sensor={sensor} segment={segment}")
    return (layer << 13) | (ladder << 8) | (sensor << 5) | segment


def split_vxd_id(vid: int) -> tuple[int, int, int, int]:
    """Inverse of :func:`vxd_id`: (layer, ladder, sensor, segment)."""
    return (vid >> 13) & 0x7, (vid >> 8) & 0x1F, (vid >> 5) & 0x7, vid & 0x1F


#: Belle II VxdID for each generator index (uint16).
VXD_IDS = np.array([vxd_id(*s) for s in SENSORS], dtype=np.uint16)
#: Layer (1 or 2) for each generator index.
LAYER_OF_INDEX = np.array([s[0] for s in SENSORS], dtype=np.uint8)


def sensor_index(layer: int, ladder: int, sensor: int) -> int:
    """Generator index of a sensor given by (layer, ladder, sensor)."""
    try:
        return SENSORS.index((layer, ladder, sensor))
    except ValueError:
        raise ValueError(f"no PXD sensor {layer}.{ladder}.{sensor} in the generator's 40-sensor order") from None


def sensor_name(index: int) -> str:
    """The usual 'layer.ladder.sensor' name of a generator index."""
    layer, ladder, sensor = SENSORS[index]
    return f"{layer}.{ladder}.{sensor}"
