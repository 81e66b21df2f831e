"""run.config: W&B-compatible access, the allow_val_change guard, value handling, config sources."""

from __future__ import annotations

import argparse
import copy
import enum
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runstream.config import Config, load_config
from runstream.errors import ConfigError, UsageError


class Recorder:
    def __init__(self) -> None:
        self.deltas: list[dict[str, Any]] = []

    def __call__(self, delta: dict[str, Any]) -> None:
        self.deltas.append(delta)


class FakeAbslFlags:
    """What absl.flags.FLAGS offers that W&B (and runstream) use."""

    def flag_values_dict(self) -> dict[str, Any]:
        return {"batch_size": 32, "model": "resnet"}


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def cfg(rec: Recorder) -> Config:
    return Config(emit=rec)


# --- access -----------------------------------------------------------------------------------
def test_attribute_and_item_access(cfg: Config) -> None:
    cfg.lr = 0.1
    cfg["epochs"] = 3
    assert cfg.lr == 0.1 and cfg["lr"] == 0.1
    assert cfg.epochs == 3 and cfg.get("epochs") == 3
    assert cfg.get("missing", "dflt") == "dflt"
    assert "lr" in cfg and "missing" not in cfg
    assert list(cfg) == ["lr", "epochs"] and len(cfg) == 2
    assert list(cfg.keys()) == ["lr", "epochs"]
    assert list(cfg.values()) == [0.1, 3]
    assert dict(cfg.items()) == dict(cfg) == {**cfg} == {"lr": 0.1, "epochs": 3}
    assert repr(cfg) == "Config({'lr': 0.1, 'epochs': 3})"


def test_missing_key_raises_attribute_error_and_key_error(cfg: Config) -> None:
    with pytest.raises(AttributeError, match="nope"):
        _ = cfg.nope
    with pytest.raises(KeyError):
        _ = cfg["nope"]
    assert not hasattr(cfg, "nope")
    assert getattr(cfg, "nope", 5) == 5


def test_key_must_be_str_but_may_contain_dots(cfg: Config) -> None:
    with pytest.raises(TypeError, match="int"):
        cfg.update({1: "x"})
    cfg["optimizer.lr"] = 0.01
    assert cfg["optimizer.lr"] == 0.01


def test_copy_and_deepcopy_work(cfg: Config) -> None:
    cfg.update({"a": {"b": 1}})
    assert copy.deepcopy(cfg).as_dict() == {"a": {"b": 1}}
    assert copy.copy(cfg)["a"] == {"b": 1}


# --- the allow_val_change guard -------------------------------------------------------------
def test_changing_a_value_raises_naming_key_and_both_values(cfg: Config, rec: Recorder) -> None:
    cfg.update({"lr": 0.1, "epochs": 3})
    with pytest.raises(ConfigError) as info:
        cfg.update({"lr": 0.2, "epochs": 3, "new": 1})
    msg = str(info.value)
    assert "'lr'" in msg and "0.1" in msg and "0.2" in msg and "allow_val_change=True" in msg
    # nothing from the rejected update was stored or emitted
    assert cfg.as_dict() == {"lr": 0.1, "epochs": 3}
    assert rec.deltas == [{"lr": 0.1, "epochs": 3}]
    with pytest.raises(ConfigError, match="'lr'"):
        cfg.lr = 0.3
    with pytest.raises(ValueError):  # ConfigError is a ValueError, as W&B users may catch
        cfg["lr"] = 0.3


def test_setting_the_same_value_again_is_fine_and_not_emitted(cfg: Config, rec: Recorder) -> None:
    cfg.update({"lr": 0.1, "loss": float("nan"), "layers": (1, 2), "n": 1})
    cfg.update({"lr": 0.1, "loss": float("nan"), "layers": [1, 2], "n": 1.0})
    cfg.lr = 0.1
    assert len(rec.deltas) == 1


def test_bool_is_not_the_same_as_int(cfg: Config) -> None:
    cfg.flag = 1
    with pytest.raises(ConfigError):
        cfg.flag = True


def test_allow_val_change_argument_and_default(rec: Recorder) -> None:
    cfg = Config(emit=rec)
    cfg.update({"lr": 0.1})
    cfg.update({"lr": 0.2}, allow_val_change=True)
    assert cfg.lr == 0.2
    cfg._allow_val_change = True  # what init(allow_val_change=True) sets
    cfg.lr = 0.3
    cfg["lr"] = 0.4
    assert cfg.lr == 0.4
    assert rec.deltas[-1] == {"lr": 0.4}
    assert Config(allow_val_change=True)._allow_val_change


def test_emit_gets_only_changed_keys(cfg: Config, rec: Recorder) -> None:
    cfg.update({"a": 1, "b": 2})
    cfg.update({"a": 1, "b": 2, "c": 3})
    cfg.setdefaults({"a": 100, "d": 4})
    assert rec.deltas == [{"a": 1, "b": 2}, {"c": 3}, {"d": 4}]
    assert cfg.a == 1  # setdefaults never overwrites


# --- values -----------------------------------------------------------------------------------
class Color(enum.Enum):
    RED = 1


class Level(enum.IntEnum):
    HIGH = 3


def test_values_are_stored_in_plain_form(cfg: Config) -> None:
    cfg.update(
        {
            "np_float": np.float32(0.5),
            "np_int": np.int64(7),
            "np_bool": np.bool_(True),
            "array": np.arange(3),
            "zero_d": np.array(2.5),
            "tuple": (1, "a"),
            "path": Path("/data/x"),
            "color": Color.RED,
            "level": Level.HIGH,
            "nested": {"opt": {"lr": np.float64(0.1), "betas": (0.9, 0.99)}, 3: "int key"},
            "none": None,
        }
    )
    d = cfg.as_dict()
    assert d["np_float"] == 0.5 and type(d["np_float"]) is float
    assert d["np_int"] == 7 and type(d["np_int"]) is int
    assert d["np_bool"] is True
    assert d["array"] == [0, 1, 2] and type(d["array"][0]) is int
    assert d["zero_d"] == 2.5
    assert d["tuple"] == [1, "a"]
    assert d["path"] == "/data/x"
    assert d["color"] == "Color.RED"
    assert d["level"] == 3 and type(d["level"]) is int
    assert d["nested"] == {"opt": {"lr": 0.1, "betas": [0.9, 0.99]}, "3": "int key"}
    assert d["none"] is None


def test_objects_become_str_even_when_item_fails(cfg: Config) -> None:
    class Weird:
        def item(self) -> Any:
            raise RuntimeError("no")

        def __str__(self) -> str:
            return "weird"

    cfg.w = Weird()
    cfg.s = {1}
    assert cfg.w == "weird" and cfg.s == "{1}"


def test_as_dict_is_a_deep_copy(cfg: Config) -> None:
    cfg.nested = {"a": [1]}
    d = cfg.as_dict()
    d["nested"]["a"].append(2)
    assert cfg.nested == {"a": [1]}


def test_nan_is_kept(cfg: Config) -> None:
    cfg.x = float("nan")
    assert math.isnan(cfg.x)


# --- sources ----------------------------------------------------------------------------------
def test_update_from_argparse_and_absl(cfg: Config) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--name", default="x")
    cfg.update(parser.parse_args([]))
    cfg.update(FakeAbslFlags())
    assert cfg.as_dict() == {"lr": 0.01, "name": "x", "batch_size": 32, "model": "resnet"}


def test_load_config_sources(tmp_path: Path) -> None:
    assert load_config(None) == {}
    assert load_config({"a": 1}) == {"a": 1}
    assert load_config(argparse.Namespace(a=1)) == {"a": 1}
    assert load_config(FakeAbslFlags())["batch_size"] == 32
    with pytest.raises(TypeError, match="int"):
        load_config(42)


def test_yaml_plain_and_wandb_style(tmp_path: Path) -> None:
    plain = tmp_path / "plain.yaml"
    plain.write_text("lr: 0.1\nopt:\n  name: adam\n  value: 3\n  other: 4\n")
    assert load_config(str(plain)) == {"lr": 0.1, "opt": {"name": "adam", "value": 3, "other": 4}}

    wandb_style = tmp_path / "config-defaults.yaml"
    wandb_style.write_text(
        "wandb_version: 1\n"
        "_wandb:\n  desc: null\n  value: {cli_version: 0.10}\n"
        "epochs:\n  desc: Number of epochs\n  value: 100\n"
        "batch_size:\n  value: 32\n"
        "layers:\n  desc: sizes\n  value: [64, 32]\n"
    )
    assert load_config(wandb_style) == {"epochs": 100, "batch_size": 32, "layers": [64, 32]}
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    assert load_config(empty) == {}


def test_yaml_problems_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"nope.yaml.*does not exist"):
        load_config(missing)
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"list.yaml.*mapping.*list"):
        load_config(listy)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)  # a directory


def test_include_and_exclude_keys() -> None:
    src = {"a": 1, "b": 2, "c": 3}
    assert load_config(src, include_keys=["a", "c"]) == {"a": 1, "c": 3}
    assert load_config(src, exclude_keys=["a"]) == {"b": 2, "c": 3}
    assert load_config(src, include_keys="b") == {"b": 2}  # a bare str is one key
    with pytest.raises(UsageError, match="not both"):
        load_config(src, include_keys=["a"], exclude_keys=["b"])
