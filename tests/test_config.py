"""Config validation: defaults filled, bad values refused with a message naming the key."""

from __future__ import annotations

import copy

import pytest
import yaml
from conftest import REPO

from hypersparse.config import ConfigError, load_config, run_spec, validate_config

DEMO = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())


def test_shipped_configs_validate():
    for name in ("demo.yaml", "config.yaml"):
        cfg = load_config(REPO / "config" / name)
        assert cfg["methods"] and cfg["kappas"]


def test_defaults_are_filled():
    cfg = validate_config({"datasets": ["digits"], "models": ["resnet8"], "methods": {"omp": {}}})
    assert cfg["optim"]["momentum"] == 0.9 and cfg["optim"]["weight_decay"] == 1e-4
    assert cfg["dense"] == {"epochs": 160, "milestones": [80, 120], "gamma": 0.1}
    assert cfg["finetune"]["epochs"] == 160 and cfg["seeds"] == [0]
    assert cfg["compile"] is False and cfg["precision"] == "fp32"


@pytest.mark.parametrize(
    "change, key",
    [
        ({"kappas": [0.9, 1.0]}, "kappas[1]"),
        ({"kappas": [-0.1]}, "kappas[0]"),
        ({"models": ["resnet33"]}, "models[0]"),
        ({"models": ["vgg17"]}, "models[0]"),
        ({"datasets": ["imagenet"]}, "datasets[0]"),
        ({"seeds": ["zero"]}, "seeds[0]"),
        ({"optim": {"lr": -1}}, "optim.lr"),
        ({"optim": {"learning_rate": 0.1}}, "learning_rate"),
        ({"epochs": 3}, "epochs"),
        ({"methods": {"magic": {}}}, "magic"),
        ({"methods": {"omp": {"bogus": 1}}}, "methods.omp"),
        ({"dense": {"epochs": "many"}}, "dense.epochs"),
        ({"compile": "fastest"}, "compile"),
    ],
)
def test_bad_values_name_the_key(change, key):
    cfg = copy.deepcopy(DEMO)
    cfg.update(change)
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert key in str(err.value)


def test_run_spec_is_complete_and_builds():
    from hypersparse.spec import RunSpec

    cfg = load_config(REPO / "config" / "demo.yaml")
    method = next(iter(cfg["methods"]))
    spec = RunSpec.from_dict(run_spec(cfg, "digits", "resnet8", method, 0.9, 0))
    assert spec.kappa == 0.9 and spec.width == cfg["width"] and spec.image_size == 16
    dense = RunSpec.from_dict(run_spec(cfg, "digits", "resnet8", "dense", 0.0, 0))
    assert dense.family == "dense"
