"""The pxdbg command as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from pxdbg.models import resnet
from pxdbg.shared.digitsfile import DigitsFile

pytestmark = pytest.mark.timeout(180)
PXDBG = [sys.executable, "-m", "pxdbg"]


def run(*args, check=True, **kw):
    proc = subprocess.run([*PXDBG, *args], capture_output=True, text=True, timeout=150, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"pxdbg {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_generate_and_run_write_the_same_digits(tmp_path):
    gen = tmp_path / "gen.npz"
    piped = tmp_path / "run.npz"
    run("generate", "--events", "12", "--seed", "-77", "--first-frame", "5", "--out", str(gen), "-q")
    proc = run(
        "run",
        "--workers",
        "2",
        "--events",
        "12",
        "--seed",
        "-77",
        "--first-frame",
        "5",
        "--prefetch",
        "4",
        "--out",
        str(piped),
        "--json",
        "-q",
        "--work-ms",
        "2",
    )
    summary = json.loads(proc.stdout)
    assert summary["events"] == 12 and summary["max_in_flight"] <= 4
    assert summary["wire_bytes_per_digit"] < 4.0
    assert summary["counters"]["frames_received"] >= 12
    a, b = DigitsFile(gen), DigitsFile(piped)
    assert a.n_events == b.n_events == 12
    assert all(x == y for x, y in zip(a, b))
    assert a.meta["seed"] == b.meta["seed"] == -77 and a.meta["first_frame"] == 5
    assert a.meta["model"] == "parametric" and a.meta["checkpoint_sha256"] == b.meta["checkpoint_sha256"]


def test_run_prints_a_summary_and_a_random_seed_is_reported(tmp_path):
    proc = run("run", "--workers", "1", "--events", "5")
    assert "frames/s" in proc.stdout and "consumer wait" in proc.stdout and "bytes per digit" in proc.stdout
    assert "random: pass --seed to reproduce" in proc.stderr


def test_run_without_producers_fails_clearly(tmp_path):
    proc = run(
        "run",
        "--connect",
        f"ipc://{tmp_path}/none.sock",
        "--events",
        "3",
        "--connect-timeout",
        "1",
        "--out",
        str(tmp_path / "x.npz"),
        check=False,
    )
    assert proc.returncode == 1
    assert "no producer answered" in proc.stderr
    assert not (tmp_path / "x.npz").exists(), "no partial output file"


def test_models_and_payload_add(tmp_path):
    env_store = tmp_path / "store"
    import os

    env = {**os.environ, "PXDBG_PAYLOADS": str(env_store)}
    proc = run("models", env=env)
    assert "parametric  payload PXDBackgroundGenerator_parametric" in proc.stdout
    assert "resnet      no default payload" in proc.stdout
    ckpt = tmp_path / "r.pt"
    torch.save(resnet.Model().state_dict(), ckpt)
    bad = run("payload", "add", str(ckpt), "--model", "convnet", env=env, check=False)
    assert bad.returncode == 2 and "looks like a checkpoint of the model 'resnet'" in bad.stderr
    run("payload", "add", str(ckpt), "--model", "resnet", env=env)
    proc = run("models", env=env)
    assert f"resnet      payload PXDBackgroundGenerator_resnet [PXDBackgroundGenerator] -> {env_store}" in proc.stdout
    listing = run("payload", "list", env=env).stdout
    assert "PXDBackgroundGenerator_resnet" in listing and "PXDBackgroundGenerator_parametric" in listing


def test_bad_arguments_are_refused():
    proc = run("generate", "--model", "resnet", "--events", "1", "--out", "x.npz", check=False)
    assert proc.returncode == 2 and "no public weights for resnet" in proc.stderr
    proc = run("run", "--workers", "0", "--events", "1", check=False)
    assert proc.returncode == 2 and "must be a whole number of at least 1" in proc.stderr
    proc = run("generate", "--events", "1", "--seed", str(2**63), "--out", "x.npz", check=False)
    assert proc.returncode == 2 and "2**63" in proc.stderr


def test_help_says_what_each_option_does():
    import argparse

    from pxdbg.cli import build_parser

    def parser_of(*names):
        p = build_parser()
        for name in names:
            sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
            p = sub.choices[name]
        return p

    top = run("-h").stdout
    assert "join" in top and "``" not in top
    for names, options in {
        (): ["-v", "--version"],
        ("run",): ["--events", "-q", "--force", "--resume"],
        ("generate",): ["--device", "--batch", "-q", "--force"],
        ("bench",): ["--json", "--files", "--quick"],
        ("models",): ["--globaltag"],
        ("models", "init"): ["model", "--occupancy", "--seed", "--out", "--force"],
        ("payload", "add"): ["path", "--model", "--force", "--globaltag"],
        ("join",): ["out", "parts", "--force"],
        ("produce",): ["--bind", "--max-pending", "--metrics-port"],
    }.items():
        actions = {opt: a for a in parser_of(*names)._actions for opt in (a.option_strings or [a.dest])}
        for option in options:
            assert actions[option].help, f"pxdbg {' '.join(names)} {option} has no help text"
    produce = run("produce", "-h").stdout
    assert "--parent-pid" not in produce, "an internal option is shown"
    assert "--max-batch" in parser_of("generate")._option_string_actions["--batch"].help


def test_quiet_hides_info_and_a_failed_run_is_one_line(tmp_path):
    proc = run("generate", "--events", "2", "--seed", "1", "--out", str(tmp_path / "q.npz"), "-q")
    assert proc.stderr == "" and "wrote 2 events" in proc.stdout
    import socket

    with socket.socket() as s:  # a port nobody serves
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["run", "--connect", f"tcp://127.0.0.1:{port}", "--events", "3", "--connect-timeout", "1", "-q"]
    for extra in ([], ["--out", str(tmp_path / "r.npz")]):
        proc = run(*args, *extra, check=False)
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
        assert "failed after 0" not in proc.stderr and "no producer answered" in proc.stderr
    # a bad endpoint form and a secret key others can read: the reason, in one line, and no output file
    run("keys", "new", "me", "--dir", str(tmp_path))
    (tmp_path / "me.key_secret").chmod(0o644)
    for bad, reason in (
        (["--connect", "garbage"], "unknown form"),
        (
            [
                "--connect",
                f"tcp://127.0.0.1:{port}",
                "--curve-client-secret",
                str(tmp_path / "me.key_secret"),
                "--curve-server-public",
                str(tmp_path / "me.key"),
            ],
            "chmod 600",
        ),
    ):
        proc = run("run", *bad, "--events", "2", "--out", str(tmp_path / "bad.npz"), check=False)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and reason in proc.stderr, proc.stderr
        assert not (tmp_path / "bad.npz").exists()


def test_produce_on_a_busy_port_says_so_in_one_line():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = run("produce", "--bind", f"tcp://127.0.0.1:{port}", check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "address is in use" in proc.stderr and "stopped" not in proc.stderr


def test_the_parametric_model_needs_no_torch(tmp_path):
    code = (
        "import sys\n"
        "from pxdbg.cli import main\n"
        f"assert main(['generate', '--events', '2', '--seed', '5', '--out', {str(tmp_path / 'p.npz')!r}, '-q']) == 0\n"
        "assert 'torch' not in sys.modules, 'generate imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    from pxdbg.bench import bench_producer_start

    start = bench_producer_start(repeat=1)
    print(f"\na parametric producer served after {start['start_s']:.2f} s")
    assert start["torch_imported"] is False
    # the frames are those of the torch module's path
    from pxdbg import models
    from pxdbg.models import parametric

    fast = models.load("parametric")
    net = parametric.new_model()
    net.load_state_dict(models.read_state_dict(fast.checkpoint_path))
    rngs = [__import__("pxdbg.shared.seeding", fromlist=["x"]).frame_rng(5, i) for i in range(2)]
    assert all(a == b for a, b in zip(fast.frames(5, range(2)), parametric.generate_sparse(net, rngs)))
    assert all(a == b for a, b in zip(fast.frames(5, range(2)), DigitsFile(tmp_path / "p.npz")))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message is for a machine without CUDA")
def test_the_python_api_cuda_error_names_no_cli_flag():
    from pxdbg import models
    from pxdbg.shared.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        models.load("resnet", device="cuda")
    assert "--device" not in str(err.value) and "device 'cpu'" in str(err.value)


@pytest.mark.slow  # writes and loads full-size random GAN weights
def test_models_init_writes_marked_random_weights_that_payload_add_refuses(tmp_path):
    import os

    ckpt = tmp_path / "c.pt"
    proc = run("models", "init", "convnet", "-o", str(ckpt), "--seed", "3")
    assert "seeded random weights of convnet" in proc.stdout
    from pxdbg.models import random_weights

    meta = random_weights.metadata(ckpt)
    assert meta["random_weights"] is True and meta["seed"] == 3 and meta["model"] == "convnet"
    again = run("models", "init", "convnet", "-o", str(ckpt), check=False)
    assert again.returncode == 2 and "exists" in again.stderr
    env = {**os.environ, "PXDBG_PAYLOADS": str(tmp_path / "store")}
    refused = run("payload", "add", str(ckpt), "--model", "convnet", env=env, check=False)
    assert refused.returncode == 2 and "random weights" in refused.stderr and "--force" in refused.stderr
    run("payload", "add", str(ckpt), "--model", "convnet", "--force", env=env)
    first = torch.load(ckpt, weights_only=True)["state_dict"]
    run("models", "init", "convnet", "-o", str(ckpt), "--seed", "3", "--force")
    second = torch.load(ckpt, weights_only=True)["state_dict"]
    assert all(torch.equal(first[k], second[k]) for k in first), "the same seed gives the same weights"
    other = tmp_path / "other-name.pt"
    run("models", "init", "convnet", "-o", str(other), "--seed", "3")
    assert other.read_bytes() == ckpt.read_bytes(), "the same seed gives the same file (and sha256)"


def test_a_new_subcommand_is_one_registration(monkeypatch, capsys):
    """A module with ``add_arguments(parser)`` and ``run(args) -> int`` becomes ``pxdbg farm rehearse`` by one entry of
    ``COMMANDS``; it is listed under its group, parses its own options and its exit status is pxdbg's."""
    import types

    from pxdbg import cli

    module = types.SimpleNamespace(
        add_arguments=lambda parser: parser.add_argument("--producers", type=int, required=True),
        run=lambda args: print(f"simulated {args.producers} producers") or 3,
    )
    monkeypatch.setattr(
        cli,
        "COMMANDS",
        (*cli.COMMANDS, cli.Command("farm rehearse", "rehearse a farm", module.add_arguments, module.run)),
    )
    assert cli.main(["farm", "rehearse", "--producers", "5"]) == 3
    assert capsys.readouterr().out == "simulated 5 producers\n"
    with pytest.raises(SystemExit):
        cli.main(["farm", "--help"])
    assert "rehearse a farm" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["farm", "rehearse"])
    assert "the following arguments are required: --producers" in capsys.readouterr().err


def test_every_command_has_something_to_run(monkeypatch):
    from pxdbg import cli

    groups = {tuple(c.words.split()[:-1]) for c in cli.COMMANDS}
    for command in cli.COMMANDS:
        assert command.run is not None or tuple(command.words.split()) in groups, command.words
    monkeypatch.setattr(cli, "COMMANDS", (*cli.COMMANDS, cli.Command("lonely", "a group without subcommands")))
    with pytest.raises(AssertionError, match="pxdbg lonely has nothing to run and no subcommands"):
        cli.build_parser()
    orphan = cli.Command("fleet simulate", "a subcommand of no group", run=lambda args: 0)
    monkeypatch.setattr(cli, "COMMANDS", (orphan, *cli.COMMANDS))
    with pytest.raises(AssertionError, match="pxdbg fleet simulate is listed before its group pxdbg fleet"):
        cli.build_parser()
