from __future__ import annotations

from pxdbg.cli import main

raise SystemExit(main())
