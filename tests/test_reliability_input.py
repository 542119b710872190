"""Bad input refused early: one clear error line naming the problem (and the fix), exit code 2,
no partial output. Library-level checks live in test_config.py / test_data_*.py; these go
through the CLI (its `main`, or the console script) and the Snakemake workflow."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from fabricate import make_cifar_pickles, make_tinyimagenet_zip, patched_cifar_checksums
from reliability_helpers import REPO, error_lines, run_cli, tiny_spec
from workflow_utils import snakemake

from hypersparse.cli import main
from hypersparse.models import build_model

TINY = yaml.safe_load((REPO / "tests" / "data" / "tiny.yaml").read_text())


def refused(capsys, argv: list[str], *needles: str, code: int = 2) -> str:
    """Run the CLI in-process; assert exit ``code`` and one error line holding ``needles``."""
    rc = main(argv)
    err = error_lines(capsys.readouterr().err)
    assert rc == code, err
    assert len(err) == 1 and err[0].startswith("hypersparse: error: "), err
    for needle in needles:
        assert needle in err[0], (needle, err[0])
    return err[0]


def digits_args(root: Path, out: Path, *extra: str) -> list[str]:
    """Arguments of a tiny digits run."""
    return ["--dataset", "digits", "--model", "resnet8", "--width", "0.25", "--image-size", "16",
            "--data-root", str(root), "--device", "cpu", "--epochs", "1", "--finetune-epochs", "1",
            "--out", str(out), *extra]


# ------------------------------------------------------- 6. config schema through the workflow
@pytest.mark.slow
@pytest.mark.parametrize(
    "change, keys",
    [
        (  # schema: types, ranges, unknown keys, unknown data set, kappa = 1 - all in one message
            {"optim": {"lr": "fast"}, "threads": 0, "width": -1, "epochs_total": 3,
             "datasets": ["imagenet"], "kappas": [0.9, 1.0], "dense": {"epochs": 2.5}},
            ["optim.lr", "threads", "width", "epochs_total", "datasets[0]", "kappas[1]",
             "dense.epochs"],
        ),
        (  # semantics: impossible depth, unknown method, unknown/out-of-range method parameters
            {"models": ["resnet33"],
             "methods": {"magic": {}, "omp": {"bogus": 1},
                         "art_bad": {"family": "art", "lambda_init": -1.0}}},
            ["models[0]", "resnet33", "unknown method 'magic'", "known methods", "methods.omp",
             "bogus", "methods.art_bad", "lambda_init"],
        ),
        pytest.param(
            {"methods": {"pruner": {"family": "magic"}}}, ["methods.pruner", "'magic'"],
            id="unknown-family-key",
        ),
        ({"plugins": ["no_such_plugin_module"]}, ["plugins", "no_such_plugin_module"]),
    ],
    ids=["schema", "semantics", "unknown-family-key", "plugin"],
)
def test_bad_config_is_refused_by_the_workflow(tmp_path, change, keys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**TINY, **change}))
    out = snakemake("-n", "--configfile", str(bad), "--config", f"results_dir={tmp_path}/r",
                    f"figures_dir={tmp_path}/f", f"data_root={tmp_path}/d", cwd=tmp_path,
                    check=False)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    for key in keys:
        assert key in text, (key, text[-3000:])
    assert "Traceback" not in text
    for folder in ("r", "f", "d"):
        assert not (tmp_path / folder).exists()
    # The same file through the CLI: exit 2, the same keys.
    rc = run_cli("validate-config", str(bad))
    assert rc.returncode == 2 and all(k in rc.stderr for k in keys)


@pytest.mark.parametrize(
    "extra, needles",
    [
        (["train", "--kappa", "1.0"], ["kappa must be in [0, 1)", "1.0"]),
        (["train", "--kappa", "-0.5"], ["kappa must be in [0, 1)"]),
        (["train", "--set", "lambda_init"], ["--set", "KEY=VALUE"]),
        (["sparsify", "--method", "magic"], ["unknown method 'magic'", "known methods"]),
        (["sparsify", "--method", "omp", "--set", "bogus=1"], ["bogus", "allowed"]),
        (["sparsify", "--method", "art", "--set", "lambda_init=-1"], ["lambda_init"]),
        (["sparsify", "--method", "art", "--set", "warmup_epochs=two"],
         ["warmup_epochs", "integer"]),
    ],
)
def test_bad_run_arguments_are_refused(digits_root, tmp_path, capsys, extra, needles):
    out = tmp_path / "run"
    sub, *rest = extra
    kappa = ["--kappa", "0.9"] if sub == "sparsify" else []
    # later options win in argparse, so --dataset/--model/--kappa in `rest` override the defaults
    refused(capsys, [sub, *digits_args(digits_root, out), *kappa, *rest], *needles)
    assert not out.exists()


def test_bad_spec_json_is_refused(digits_root, tmp_path, capsys):
    out = tmp_path / "run"
    spec = tiny_spec(digits_root, epochs=1, optimizer="adam")
    refused(capsys, ["train", "--spec-json", json.dumps(spec), "--out", str(out)],
            "unknown run-spec keys: optimizer")
    refused(capsys, ["train", "--spec-json", "{not json", "--out", str(out)], "Expecting")
    assert not out.exists()


@pytest.mark.parametrize("extra, needle", [
    (["--model", "resnet33"], "resnet33"),
    (["--model", "vgg17"], "vgg17"),
    (["--dataset", "imagenet"], "unknown data set 'imagenet'"),
])
def test_bad_names_are_refused_by_argparse_in_one_line(digits_root, tmp_path, capsys, extra,
                                                       needle):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(["train", *digits_args(digits_root, out), *extra])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert exc.value.code == 2 and len(err) == 1 and needle in err[0], err
    assert err[0].startswith("hypersparse train: error: argument")
    assert not out.exists()


def test_unparsable_number_is_refused_by_argparse(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--dataset", "digits", "--model", "resnet8", "--kappa", "abc",
              "--out", str(tmp_path / "run")])
    assert exc.value.code == 2
    assert "argument --kappa: invalid float value: 'abc'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------- 7. bad data folders
@pytest.fixture
def data_copy(digits_root, tmp_path) -> Path:
    """A private copy of the prepared digits cache that a test may damage."""
    root = tmp_path / "data"
    shutil.copytree(digits_root, root)
    return root


@pytest.mark.parametrize(
    "damage, needles",
    [
        ("truncate train.npz", ["train.npz", "corrupt"]),
        ("remove test.npz", ["test.npz", "missing"]),
        ("remove meta.json", ["meta.json", "hypersparse prepare --dataset digits"]),
        ("flip a byte of train.npz", ["train.npz"]),
    ],
)
def test_damaged_data_cache_is_refused(data_copy, tmp_path, capsys, damage, needles):
    prepared = next(data_copy.glob("digits/prepared*"))
    verb, *_, name = damage.split()
    path = prepared / name
    if verb == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif verb == "remove":
        path.unlink()
    else:
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        path.write_bytes(bytes(raw))
    out = tmp_path / "run"
    refused(capsys, ["train", *digits_args(data_copy, out)], *needles)
    assert not out.exists()


def test_cifar_file_with_a_flipped_byte_is_refused(tmp_path, capsys):
    good, bad = tmp_path / "good", tmp_path / "bad"
    md5s = make_cifar_pickles(good, "cifar10", n_train=20, n_test=10)
    make_cifar_pickles(bad, "cifar10", n_train=20, n_test=10)
    victim = bad / "cifar10" / "raw" / "cifar-10-batches-py" / "data_batch_3"
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    victim.write_bytes(bytes(raw))
    with patched_cifar_checksums("cifar10", md5s):
        assert main(["prepare", "--dataset", "cifar10", "--root", str(good), "--no-download"]) == 0
        capsys.readouterr()
        refused(capsys, ["prepare", "--dataset", "cifar10", "--root", str(bad), "--no-download"],
                "data_batch_3", "md5", "hypersparse prepare --dataset cifar10")
    assert not (bad / "cifar10" / "prepared").exists()
    out = tmp_path / "run"  # training on the unprepared data set says how to prepare it
    refused(capsys, ["train", "--dataset", "cifar10", "--model", "resnet8", "--data-root",
                     str(bad), "--device", "cpu", "--out", str(out)],
            "hypersparse prepare --dataset cifar10")
    assert not out.exists()


def test_tinyimagenet_tree_with_a_missing_class_is_refused(tmp_path, capsys):
    root = tmp_path / "data"
    raw = root / "tinyimagenet" / "raw"
    zpath = tmp_path / "tiny-imagenet-200.zip"
    make_tinyimagenet_zip(zpath, wnids=("n01443537", "n01629819", "n01641577"),
                          omit_train=("n01629819",))
    with zipfile.ZipFile(zpath) as z:
        z.extractall(raw)  # the extracted tree placed by hand (no md5 check applies)
    refused(capsys, ["prepare", "--dataset", "tinyimagenet", "--root", str(root),
                     "--no-download"], "class n01629819", "prepare again")
    assert not (root / "tinyimagenet" / "prepared").exists()


# ----------------------------------------------------- 8. checkpoints that do not fit --init
def _state(model: str = "resnet8", classes: int = 10, width: float = 0.25) -> dict:
    return build_model(model, classes, in_channels=1, width=width).state_dict()


@pytest.mark.parametrize(
    "state, needles",
    [
        (lambda: _state(classes=7), ["fc", "(7,", "another model or class count"]),
        (lambda: _state(model="resnet14"), ["unexpected keys", "another model"]),
        (lambda: _state(width=0.5), ["shape mismatch"]),
        (lambda: {"model": "not a state dict"}, ["holds no state dict"]),
    ],
    ids=["class-count", "depth", "width", "no-state-dict"],
)
def test_init_checkpoint_that_does_not_fit_is_refused(digits_root, tmp_path, capsys, state,
                                                      needles):
    init = tmp_path / "init.pt"
    torch.save(state(), init)
    out = tmp_path / "run"
    refused(capsys, ["sparsify", *digits_args(digits_root, out), "--method", "omp", "--kappa",
                     "0.9", "--init", str(init)], str(init), *needles)
    assert not out.exists()


def test_dense_dir_snapshot_that_does_not_fit_is_refused(digits_root, tmp_path, capsys):
    dense = tmp_path / "dense"
    dense.mkdir()
    torch.save({"model": _state(classes=100), "optimizer": {}, "epoch": 1},
               dense / "snapshot_e1.pt")
    out = tmp_path / "run"
    args = ["sparsify", *digits_args(digits_root, out), "--method", "art", "--kappa", "0.9",
            "--set", "warmup_epochs=1", "--dense-dir", str(dense)]
    refused(capsys, args, "snapshot_e1.pt", "shape mismatch", "another model or class count")
    (dense / "snapshot_e1.pt").unlink()
    refused(capsys, args, "snapshot_e1.pt", "does not exist")
    refused(capsys, args[:-2], "pass --dense-dir")
    assert not out.exists()
