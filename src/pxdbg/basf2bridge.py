"""What the basf2 module hands to basf2 and ROOT: the digits, written into a TClonesArray of
``Belle2::PXDDigit`` in one C++ call (:class:`DigitFiller`), and pxdbg's log records, written into basf2's log
system (:class:`Basf2LogHandler`).

Imports neither basf2 nor ROOT at import time: ROOT when a :class:`DigitFiller` is made, basf2 is passed in.
Python 3.8 compatible, as :mod:`pxdbg.background_generator`.
"""

from __future__ import annotations

import logging

import numpy as np

from pxdbg.shared.geometry import VXD_IDS

#: basf2 debug level of the per-event line (shown with ``basf2.set_debug_level(20)`` and log level DEBUG)
EVENT_DEBUG_LEVEL = 20

_FILL_CODE = r"""
#if __has_include(<pxd/dataobjects/PXDDigit.h>)
#include <pxd/dataobjects/PXDDigit.h>
#endif
#include <TClonesArray.h>
namespace pxdbg_fill {
// Replace the content of `digits` (a TClonesArray of Belle2::PXDDigit) with n digits.
long fill_pxd_digits(TClonesArray* digits, const unsigned short* vxd_id, const unsigned char* u,
                     const unsigned short* v, const unsigned char* charge, long n) {
  digits->Clear("C");
  for (long i = 0; i < n; ++i)
    new ((*digits)[i]) Belle2::PXDDigit(Belle2::VxdID(vxd_id[i]), u[i], v[i], charge[i]);
  return digits->GetEntriesFast();
}
}
"""


class DigitFiller:
    """Writes a frame's digits into a TClonesArray of ``Belle2::PXDDigit``: in one C++ call where the
    interpreter accepts the fill function, otherwise with a Python loop."""

    def __init__(self, force_python: bool = False) -> None:
        import ROOT

        self._root = ROOT
        self.fast = False
        if not force_python:
            try:
                self.fast = bool(hasattr(ROOT, "pxdbg_fill") or ROOT.gInterpreter.Declare(_FILL_CODE))
            except Exception:  # the interpreter is missing or refused the code: use the loop
                self.fast = False
        self.why_slow = (
            ""
            if self.fast
            else ("forced" if force_python else "ROOT's interpreter did not accept the C++ fill function")
        )

    def fill(self, digits, frame) -> int:
        vxd = np.ascontiguousarray(VXD_IDS[frame.sensor])
        if self.fast:
            return int(
                self._root.pxdbg_fill.fill_pxd_digits(
                    digits,
                    vxd,
                    np.ascontiguousarray(frame.u),
                    np.ascontiguousarray(frame.v),
                    np.ascontiguousarray(frame.charge),
                    frame.n_digits,
                )
            )
        return self._fill_python(digits, vxd, frame)

    def _fill_python(self, digits, vxd, frame) -> int:
        Belle2 = self._root.Belle2
        bind, address = self._root.bind_object, self._root.addressof
        ids = {int(i): Belle2.VxdID(int(i)) for i in np.unique(vxd)}
        digits.Clear("C")
        for n, (i, u, v, c) in enumerate(zip(vxd.tolist(), frame.u.tolist(), frame.v.tolist(), frame.charge.tolist())):
            slot = bind(address(digits.ConstructedAt(n)), Belle2.PXDDigit)
            slot.__assign__(Belle2.PXDDigit(ids[i], u, v, c))
        return digits.GetEntriesFast()


class Basf2LogHandler(logging.Handler):
    """pxdbg's log records (the client's, the prefetch process's, the workers') into basf2's log system, so they
    reach ``log_to_file`` and the error summary like the module's own messages."""

    def __init__(self, basf2) -> None:
        super().__init__(logging.DEBUG)
        self._basf2 = basf2

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # a record whose arguments do not format: say so rather than lose it
            text = f"(unformattable log record {record.msg!r})"
        if record.levelno >= logging.ERROR:
            self._basf2.B2ERROR(text)
        elif record.levelno >= logging.WARNING:
            self._basf2.B2WARNING(text)
        elif record.levelno >= logging.INFO:
            self._basf2.B2INFO(text)
        else:
            self._basf2.B2DEBUG(EVENT_DEBUG_LEVEL, text)
