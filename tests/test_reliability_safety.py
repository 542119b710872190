"""Safe by default: loading a checkpoint never runs pickled code; training touches no network
and writes nothing outside its run folder."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pytest
import torch
from reliability_helpers import error_lines, metrics, python_env, run_cli, snapshot, tiny_spec

from hypersparse.cli import main
from hypersparse.models import build_model
from hypersparse.spec import RunSpec


class Payload:
    """Pickles as a call of os.system: loading it with plain pickle would run the command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def evil_checkpoint(path: Path, marker: Path, layout: str) -> Path:
    """A checkpoint whose unpickling would create ``marker``; ``layout`` mimics a real one."""
    state = build_model("resnet8", 10, in_channels=1, width=0.25).state_dict()
    obj = {
        "state": {**state, "fc.weight": Payload(marker)},
        "snapshot": {"model": state, "optimizer": Payload(marker), "epoch": 1},
        "ckpt": {"format": 1, "phase": "dense", "epoch": 1, "model": Payload(marker)},
    }[layout]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


def test_the_payload_is_live(tmp_path):
    """Control: an unsafe load of such a file does run the command (so the tests below mean it)."""
    marker = tmp_path / "pwned"
    path = evil_checkpoint(tmp_path / "x.pt", marker, "state")
    torch.load(path, weights_only=False)
    assert marker.exists()


def _args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["--dataset", "digits", "--model", "resnet8", "--width", "0.25", "--image-size", "16",
            "--data-root", str(root), "--device", "cpu", "--epochs", "1", "--finetune-epochs", "1",
            "--threads", "1", "--out", str(out), *extra]


def _refused(capsys, argv: list[str], path: Path) -> None:
    rc = main(argv)
    err = error_lines(capsys.readouterr().err)
    assert rc == 2 and len(err) == 1, err
    assert str(path) in err[0] and "cannot be loaded safely" in err[0], err


def test_init_checkpoint_with_pickled_code_is_refused(digits_root, tmp_path, capsys):
    marker = tmp_path / "pwned"
    init = evil_checkpoint(tmp_path / "model.pt", marker, "state")
    out = tmp_path / "run"
    _refused(capsys, ["sparsify", *_args(digits_root, out, "--method", "omp", "--kappa", "0.9",
                                          "--init", str(init))], init)
    assert not marker.exists() and not out.exists()


@pytest.mark.parametrize("name, layout, extra", [
    ("model.pt", "state", ["--method", "omp"]),
    ("snapshot_e1.pt", "snapshot", ["--method", "art", "--set", "warmup_epochs=1"]),
])
def test_dense_dir_file_with_pickled_code_is_refused(digits_root, tmp_path, capsys, name,
                                                     layout, extra):
    marker = tmp_path / "pwned"
    bad = evil_checkpoint(tmp_path / "dense" / name, marker, layout)
    out = tmp_path / "run"
    _refused(capsys, ["sparsify", *_args(digits_root, out, *extra, "--kappa", "0.9",
                                          "--dense-dir", str(tmp_path / "dense"))], bad)
    assert not marker.exists() and not out.exists()


def test_resume_checkpoint_with_pickled_code_is_ignored_with_a_warning(digits_root, tmp_path,
                                                                       capsys, caplog):
    marker = tmp_path / "pwned"
    out = tmp_path / "run"
    spec = tiny_spec(digits_root, epochs=1, batch_size=128)
    out.mkdir()
    resolved = RunSpec.from_dict(spec).to_dict()
    (out / "spec.json").write_text(json.dumps(resolved))  # an unfinished run of this spec
    evil_checkpoint(out / "ckpt" / "last.pt", marker, "ckpt")
    evil_checkpoint(out / "ckpt" / "prev.pt", marker, "ckpt")
    with caplog.at_level("WARNING", logger="hypersparse"):
        rc = main(["train", "--spec-json", json.dumps(spec), "--threads", "1", "--out", str(out)])
    assert rc == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert sum("cannot be loaded safely" in w for w in warnings) == 2, warnings
    assert any("starts from scratch" in w for w in warnings), warnings
    assert not marker.exists()
    assert metrics(out)["status"] == "ok" and metrics(out)["epochs_trained"] == 1


# ------------------------------------------------------------------- 10. no network, no litter
SITECUSTOMIZE = '''
import socket, sys

def _blocked(*args, **kwargs):
    print("NETWORK ATTEMPT", args[1:2], file=sys.stderr, flush=True)
    raise OSError("network access is blocked in this test")

socket.socket.connect = _blocked
socket.socket.connect_ex = _blocked
socket.socket.sendto = _blocked
socket.create_connection = _blocked
socket.getaddrinfo = _blocked
print("sitecustomize: network blocked", file=sys.stderr, flush=True)
'''


@pytest.mark.slow
def test_training_needs_no_network_and_writes_only_its_run_folder(digits_root, tmp_path):
    site, home, tmp, cwd = (tmp_path / n for n in ("site", "home", "tmp", "cwd"))
    for d in (site, home, tmp, cwd):
        d.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = python_env(site, HOME=str(home), TMPDIR=str(tmp))
    for var in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "TORCH_HOME",
                "MPLCONFIGDIR", "PYTHONDONTWRITEBYTECODE"):
        env.pop(var, None)
    # Exclude byte-code caches of the test's own sitecustomize (written by the interpreter).
    watched = (home, tmp, cwd, digits_root, site)
    before = snapshot(*watched, skip=lambda p: "__pycache__" in p.parts)
    spec = tiny_spec(digits_root, epochs=1, batch_size=128)
    proc = run_cli("train", "--spec-json", json.dumps(spec), "--threads", "1", "--out", "run",
                   env=env, cwd=cwd)
    assert "sitecustomize: network blocked" in proc.stderr, proc.stderr
    assert proc.returncode == 0, proc.stderr
    assert "NETWORK ATTEMPT" not in proc.stderr
    after = snapshot(*watched, skip=lambda p: "__pycache__" in p.parts)
    run = cwd / "run"
    changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
    outside = [p for p in changed if not Path(p).is_relative_to(run)]
    assert not outside, f"written outside the run folder: {outside}"
    assert {Path(p).name for p in changed} >= {"metrics.json", "model.pt", "history.csv",
                                                "spec.json"}
    assert metrics(run)["status"] == "ok"
