"""``pxdbg models`` and ``pxdbg payload``: the models, their default checkpoints and the payload stores."""

from __future__ import annotations

import argparse

from pxdbg import outputs
from pxdbg.shared import payloads, registry
from pxdbg.shared.errors import ConfigError


def add_models_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--globaltag", help=f"global tag whose payloads are listed (default {payloads.DEFAULT_GLOBALTAG})"
    )


def run_models(args: argparse.Namespace) -> int:
    for info in registry.REGISTRY.values():
        try:
            p = payloads.find(info.name, args.globaltag, verify=False)
            where = f"payload {p.name} [{p.globaltag}] -> {p.path}"
        except payloads.PayloadError:
            where = (
                f"no default payload in the stores (global tag {args.globaltag or payloads.DEFAULT_GLOBALTAG}); "
                f"give --checkpoint or run 'pxdbg payload add PATH --model {info.name}'"
                + (f"; to try it: pxdbg models init {info.name} -o {info.name}-random.pt" if info.is_gan else "")
            )
        print(f"{info.name:11s} {where}\n{'':11s} ({info.kind}: {info.summary})")
    print("payload stores searched, in order: " + ", ".join(str(s) for s in payloads.search_path()))
    return 0


def add_init_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", choices=[n for n in registry.names() if registry.get(n).is_gan], help="the GAN")
    parser.add_argument("-o", "--out", required=True, help="the checkpoint (.pt) to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights (default 0)")
    parser.add_argument(
        "--occupancy",
        type=float,
        default=0.01,
        help="share of the pixels hit in a frame, set through the output layer's bias (default 0.01)",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing --out")


def run_init(args: argparse.Namespace) -> int:
    from pxdbg.models import random_weights

    if not args.out.endswith(".pt"):
        raise ConfigError(f"-o/--out names the checkpoint to write, a .pt file; got {args.out!r}")
    outputs.refuse_overwrite(args.out, args.force)
    path = random_weights.write(args.model, args.out, seed=args.seed, occupancy=args.occupancy)
    sha = payloads.sha256_file(path)
    print(
        f"wrote {path}: seeded random weights of {args.model} (seed {args.seed}, {100 * args.occupancy:g} % of the "
        f"pixels hit; sha256 {sha}). Its frames have real shapes and costs but are no background; use it with "
        f"--model {args.model} --checkpoint {path}"
    )
    return 0


def add_payload_add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="the checkpoint: a plain state_dict (.pt) of the model")
    parser.add_argument("--model", required=True, choices=registry.names(), help="the model the checkpoint is for")
    parser.add_argument(
        "--force", action="store_true", help="register a checkpoint marked as seeded random weights (pxdbg models init)"
    )
    parser.add_argument("--globaltag", help=f"global tag to register it under (default {payloads.DEFAULT_GLOBALTAG})")
    parser.add_argument("--store", help=f"store directory (default: first of ${payloads.ENV_VAR}, else the user store)")


def run_payload_add(args: argparse.Namespace) -> int:
    from pxdbg.models import check_checkpoint, random_weights

    check_checkpoint(args.model, args.path)  # refuse a file that would not load: unsafe, or another model's
    if random_weights.is_random(args.path) and not args.force:
        raise ConfigError(
            f"{args.path} holds seeded random weights (pxdbg models init), not a trained model: as a default "
            f"payload every user of the global tag would get frames that are no background. Pass --force to "
            f"register it anyway"
        )
    p = payloads.add(args.path, args.model, args.globaltag, args.store)
    print(f"registered {p.name} in global tag {p.globaltag}: {p.path} (sha256 {p.sha256})")
    return 0


def run_payload_list(args: argparse.Namespace) -> int:
    for store in payloads.search_path():
        index = payloads.read_index(store)
        for tag, entries in sorted(index["globaltags"].items()):
            for name, entry in sorted(entries.items()):
                print(f"{store}  {tag}  {name}  {entry['file']}  sha256 {entry['sha256']}")
    return 0
