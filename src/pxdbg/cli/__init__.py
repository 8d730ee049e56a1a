"""The ``pxdbg`` command: generate, produce, run, farm, keys, validate, calibrate, bench, models, payload.

One module per command group (:mod:`~pxdbg.cli.run`, :mod:`~pxdbg.cli.farm`, ...), each with, per subcommand, a
function that adds its arguments to its parser and one that runs it and returns the exit status. :data:`COMMANDS`
lists them in the order ``pxdbg --help`` shows them; adding a subcommand is its module plus one line there, e.g.
``Command("farm simulate", "simulate a farm", simulate.add_arguments, simulate.run)``.

torch is imported only by the subcommands that generate in this process (generate, produce, bench), so
``pxdbg run --connect ...`` on a simulation node does not pay for it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass

from pxdbg import farmsim
from pxdbg.cli import bench, catalog, farm, files, generate, keys, produce, run, samples
from pxdbg.shared.errors import PxdbgError
from pxdbg.shared.version import __version__


@dataclass(frozen=True)
class Command:
    """A subcommand: its words after ``pxdbg`` (``"farm status"``), its help line, a function that adds its
    arguments to its parser, and one that runs it with the parsed arguments and returns the exit status. A group
    (``"farm"``) has neither; its subcommands are the entries whose words start with its own. A command with a
    ``run`` of its own may have subcommands too (``pxdbg models`` and ``pxdbg models init``)."""

    words: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    run: Callable[[argparse.Namespace], int] | None = None


#: Every subcommand, in the order of ``pxdbg --help`` (a group before its subcommands).
COMMANDS: tuple[Command, ...] = (
    Command(
        "models",
        "list the models and where each one's default checkpoint comes from",
        catalog.add_models_arguments,
        catalog.run_models,
    ),
    Command(
        "models init",
        "write seeded random weights of a GAN (real shapes and costs, no background; marked as such)",
        catalog.add_init_arguments,
        catalog.run_init,
    ),
    Command("payload", "manage payload stores"),
    Command(
        "payload add",
        "register a checkpoint as a model's default payload",
        catalog.add_payload_add_arguments,
        catalog.run_payload_add,
    ),
    Command("payload list", "list the payloads of every store searched", None, catalog.run_payload_list),
    Command(
        "generate",
        "generate events in this process into a digits file",
        generate.add_generate_arguments,
        generate.run_generate,
    ),
    Command("produce", "serve frames of one model to consumers", produce.add_arguments, produce.run),
    Command("run", "the main job: an event loop pulling one frame per event", run.add_arguments, run.run),
    Command("keys", "CURVE key pairs for producers and consumers"),
    Command(
        "keys new",
        "write NAME.key (public) and NAME.key_secret (secret, mode 0600)",
        keys.add_new_arguments,
        keys.run_new,
    ),
    Command(
        "validate",
        "compare a sample (.npz, .root, basf2 file, model) with the reference (Geant4 simulation) or another",
        samples.add_validate_arguments,
        samples.run_validate,
    ),
    Command(
        "join",
        "join digits files of one stream (consecutive frames) into one file",
        files.add_join_arguments,
        files.run_join,
    ),
    Command(
        "calibrate",
        "learn a parametric model (payload) from a background sample",
        samples.add_calibrate_arguments,
        samples.run_calibrate,
    ),
    Command(
        "info",
        "what a file of PXD digits holds: .npz, our ROOT layout or a basf2 file",
        files.add_info_arguments,
        files.run_info,
    ),
    Command(
        "convert",
        "the events of one file in another format (npz <-> our root; basf2 -> both)",
        files.add_convert_arguments,
        files.run_convert,
    ),
    Command(
        "export",
        "generated events as a basf2 background file that BGOverlayInput accepts (needs PyROOT)",
        generate.add_export_arguments,
        generate.run_export,
    ),
    Command("farm", "look at a producer farm, or simulate one"),
    Command(
        "farm status",
        "a table of the producers an endpoint string reaches, asked over the protocol",
        farm.add_status_arguments,
        farm.run_status,
    ),
    Command(
        "farm jobs",
        "sum the JSON summaries of `pxdbg run --json` jobs (consumer waits, re-issues, hedges)",
        farm.add_jobs_arguments,
        farm.run_jobs,
    ),
    Command(
        "farm simulate",
        "simulate a farm in virtual time with the consumer's and producer's own policy code",
        farmsim.add_arguments,
        farmsim.run,
    ),
    Command(
        "bench",
        "print speed figures (generation, consumer cost, wire size, throughput)",
        bench.add_arguments,
        bench.run,
    ),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pxdbg",
        description="Belle II PXD background generated on the fly: generate, produce, run, join, farm, keys, "
        "validate, calibrate, bench, models, payload.",
    )
    parser.add_argument("--version", action="version", version=f"pxdbg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parsers = {(): parser}
    children = {(): parser.add_subparsers(dest="command", required=True)}
    groups = {tuple(c.words.split()[:-1]) for c in COMMANDS}
    runs = {tuple(c.words.split()): c.run is not None for c in COMMANDS}
    for command in COMMANDS:
        words = tuple(command.words.split())
        parent = words[:-1]
        if parent not in parsers:
            raise AssertionError(f"pxdbg {command.words} is listed before its group pxdbg {' '.join(parent)}")
        if parent not in children:  # the first subcommand of a command: its subparsers, named as argparse reports
            children[parent] = parsers[parent].add_subparsers(dest=f"{parent[-1]}_command", required=not runs[parent])
        p = parsers[words] = children[parent].add_parser(words[-1], help=command.help)
        if command.add_arguments is not None:
            command.add_arguments(p)
        if command.run is not None:
            p.set_defaults(func=command.run)
        elif words not in groups:
            raise AssertionError(f"pxdbg {command.words} has nothing to run and no subcommands")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet = getattr(args, "quiet", False) and not args.verbose
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(name)s[%(process)d] %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return args.func(args)
    except PxdbgError as exc:  # a user error: one line; anything else is a bug and keeps its traceback
        print(f"pxdbg {args.command}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the environment said no (disk full, permissions, a busy port): one line, with the path
        if exc.errno is None:
            raise
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) not in str(exc) else ""
        print(f"pxdbg {args.command}: {exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pxdbg {args.command}: interrupted", file=sys.stderr)
        return 130
