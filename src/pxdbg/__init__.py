"""pxdbg: Belle II PXD background generated on the fly and prefetched over ZeroMQ.

Subpackages: :mod:`pxdbg.shared` (geometry, frames, files, wire protocol; no torch), :mod:`pxdbg.models`
(generator models; torch), :mod:`pxdbg.producer` (frame servers; torch), :mod:`pxdbg.consumer` (the client
used in event loops; no torch).
"""

from __future__ import annotations

from pxdbg.shared.version import __version__

__all__ = ["__version__"]
