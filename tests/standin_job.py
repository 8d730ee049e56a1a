"""One basf2 job on the stand-in, as its own process (a steering file): the tests of tests/test_basf2_parallel.py
run it with PYTHONPATH=tests/standin. Writes every event's (experiment, run, event), the digits the module
left in PXDDigits_beamBG and which process ran the module, to an .npz; the log goes to a file.

    python tests/standin_job.py OUT.npz LOG --source workers|farm:EP|in-process --nproc N [--skip K]
        [--gil S] [--model M --checkpoint P --nintra T] [--events 4,3]
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("log")
    parser.add_argument("--bgfile", required=True)
    parser.add_argument("--source", default="workers")
    parser.add_argument("--nproc", type=int, default=0)
    parser.add_argument("--events", default="4,3", help="events of run 1, run 2, ... of experiment 0")
    parser.add_argument("--skip", type=int, default=0)
    parser.add_argument("--gil", type=float, default=0.0, help="seconds FullSim holds the GIL per event")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--model", default="parametric")
    parser.add_argument("--checkpoint")
    parser.add_argument("--nintra", type=int, default=1)
    parser.add_argument("--prefetch", type=int, default=4)
    args = parser.parse_args()

    import basf2

    from pxdbg.background_generator import PXDBackgroundGenerator, inject_simulation

    basf2.logging.add_file(args.log)
    basf2.set_nprocesses(args.nproc)
    options = dict(model=args.model, checkpoint=args.checkpoint, seed=args.seed, nintra=args.nintra)
    if args.source == "workers":
        options.update(workers=1, prefetch=args.prefetch)
    elif args.source.startswith("farm:"):
        options.update(endpoints=[args.source[5:]], prefetch=args.prefetch)
    module = PXDBackgroundGenerator(**options)
    counts = [int(n) for n in args.events.split(",")]
    path = basf2.create_path()
    path.add_module(
        "EventInfoSetter",
        expList=[0] * len(counts),
        runList=list(range(1, len(counts) + 1)),
        evtNumList=counts,
        skipNEvents=args.skip,
    )
    inject_simulation(module)(path, bkgfiles=[args.bgfile], fullsim_gil_seconds=args.gil)
    basf2.process(path)

    events = sorted(basf2.processed_events, key=lambda e: e.meta)
    out = {"keys": np.array([e.meta for e in events], np.int64).reshape(-1, 3)}
    for i, e in enumerate(events):
        out[f"digits{i}"] = e["PXDDigits_beamBG"]
    roles = [sorted({role for role, _pid, name in e.calls if name == "PXDBackgroundGenerator"}) for e in events]
    out["roles"] = np.array(json.dumps(roles))
    np.savez(args.out, **out)


if __name__ == "__main__":
    main()
