"""Unusual values passed to ``init``, ``log``, ``config`` and ``summary`` (issue 10, item A).

Each either fails in the calling line with a clear error naming the key path, leaving the run
intact, or is stored.  No value may take the sidecar down: one that once did (a config nested 400
deep made the YAML writer of ``files/config.yaml`` raise ``RecursionError``; the sidecar died before
journaling the batch, was restarted 20 times on the same record and journaled nothing) is now
logged and counted there, and every other record of the run is journaled.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import runstream
from runstream.config import Config, to_plain
from runstream.errors import ConfigError
from runstream.format.record import MAX_DEPTH, check_nesting
from runstream.ring import NATIVE
from tests.conftest import sidecars_under
from tests.support.waiting import wait_for


def nested(depth: int) -> dict[str, Any]:
    """``{"k": {"k": ... {"leaf": 1}}}``: ``depth`` dicts inside the outer one."""
    d: dict[str, Any] = {"leaf": 1}
    for _ in range(depth):
        d = {"k": d}
    return d


def depth_of(value: Any) -> int:
    depth = 0
    while isinstance(value, dict) and set(value) == {"k"}:
        value, depth = value["k"], depth + 1
    return depth if isinstance(value, dict) and "leaf" in value else 10**6  # not nested(): checked


def self_dict() -> dict[str, Any]:
    d: dict[str, Any] = {"a": 1}
    d["me"] = d
    return d


def self_list() -> list[Any]:
    x: list[Any] = [1]
    x.append(x)
    return x


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("repr failed")

    def __str__(self) -> str:
        raise RuntimeError("str failed")


@pytest.fixture
def run(tmp_path: Path, finish_active_run: None) -> Iterator[Any]:
    r = runstream.init(project="hostile", mode="offline", dir=tmp_path, settings={"disable_stats": True})
    yield r
    r.finish()


# --- the SDK: a clear error in the calling line, never RecursionError -------------------------------
def test_init_with_config_nested_1000_deep_raised_recursion_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'deep/k/k.*nested more than 64"):
        runstream.init(project="p", mode="offline", dir=tmp_path, config={"deep": nested(1000)})
    assert not (tmp_path / "runstream").exists(), "a refused config must not leave a run behind"


def test_init_with_config_nested_400_deep_was_accepted_and_killed_the_sidecar(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nested more than"):
        runstream.init(project="p", mode="offline", dir=tmp_path, config={"deep": nested(400)})
    assert not sidecars_under(tmp_path)


def test_config_at_the_depth_limit_is_stored() -> None:
    ok = nested(MAX_DEPTH - 2)  # the config dict itself is one level, "deep" another
    assert to_plain(ok, "deep") == ok


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (nested(400), ConfigError, r"config value 'x/k/k.*nested more than 64"),
        (self_dict(), ConfigError, r"config value 'x/me' contains itself"),
        (self_list(), ConfigError, r"config value 'x/1' contains itself"),
        ({"o": Unprintable()}, TypeError, r"config value 'x/o' is a Unprintable whose str\(\) raised"),
        ({Unprintable(): 1}, TypeError, r"config value 'x' is a Unprintable whose str\(\) raised"),
    ],
    ids=["deep", "self-dict", "self-list", "failing-str", "failing-str-key"],
)
def test_config_value_raised_recursion_error_or_escaped_unnamed(value: Any, error: type, match: str) -> None:
    for how in ("update", "item", "attr", "setdefaults"):
        emitted: list[dict[str, Any]] = []
        cfg = Config(emitted.append)
        cfg.update({"before": 1})
        with pytest.raises(error, match=match):
            if how == "update":
                cfg.update({"x": value})
            elif how == "item":
                cfg["x"] = value
            elif how == "attr":
                cfg.x = value
            else:
                cfg.setdefaults({"x": value})
        assert dict(cfg.items()) == {"before": 1} and emitted == [{"before": 1}], how


def test_config_yaml_file_nested_too_deep_raised_recursion_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="nests values too deeply"):
        Config().update(str(path))
    path.write_text("a: " + "[" * 100 + "]" * 100 + "\n")  # readable, then refused by the depth limit
    with pytest.raises(ConfigError, match=r"config value 'a/0/0.*nested more than 64"):
        Config().update(str(path))


def test_config_int_beyond_64_bits_was_stored_then_failed_to_emit() -> None:
    emitted: list[dict[str, Any]] = []
    cfg = Config(emitted.append)
    cfg.update({"seed": 2**70, "small": -(2**63)})
    # msgpack cannot hold it: kept as its digits, as other values msgpack cannot hold are kept as str
    assert cfg["seed"] == str(2**70) and cfg["small"] == -(2**63)
    assert emitted == [{"seed": str(2**70), "small": -(2**63)}]


def test_config_non_str_top_level_key_with_failing_repr_raised_runtime_error() -> None:
    with pytest.raises(TypeError, match="config keys must be str, got Unprintable key <Unprintable"):
        Config().update({Unprintable(): 1})


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (nested(1000), ValueError, r"the value at 'x/k/k.*nested more than 64"),
        (nested(400), ValueError, r"nested more than 64"),
        (nested(100), ValueError, r"nested more than 64"),
        (self_dict(), ValueError, r"the value at 'x/me' is the same object as the one at 'x'"),
        ({"l": self_list()}, ValueError, r"the value at 'x/l/1' is the same object as the one at 'x/l'"),
        ({(1, 2): 3}, TypeError, r"the key \(1, 2\) at 'x' is a tuple; keys must be str"),
        (Unprintable(), TypeError, r"key 'x' has type Unprintable"),
    ],
    ids=["deep-1000", "deep-400", "deep-100", "self-dict", "self-list", "tuple-key", "unprintable"],
)
def test_log_and_summary_value_raised_recursion_error_or_broke_the_reader(
    run: Any, value: Any, error: type, match: str
) -> None:
    run.log({"i": 0})
    if NATIVE or depth_of(value) > 250:
        # The pure-Python build does not check rows that pack (ormsgpack refuses past 254 levels)
        with pytest.raises(error, match=match.replace("the value", "runstream.log: the value")):
            run.log({"x": value})
    with pytest.raises(error, match=match):
        run.log({"x": value}, commit=False)  # the pending-row path
    with pytest.raises(error, match=match):
        run.log({"x": value}, step=5)
    with pytest.raises(error, match=match.replace("the value", "runstream.summary: the value")):
        run.summary["x"] = value
    with pytest.raises(error, match=match):
        run.summary.update({"x": value})
    run.log({"i": 1})
    run.finish()
    data = runstream.read_run(run.dir)
    assert [r["i"] for r in data.history] == [0, 1]
    assert "x" not in data.summary


def test_an_int_beyond_64_bits_is_stored_as_a_float(run: Any) -> None:
    run.log({"x": 2**70})  # as W&B stores it (issue 11); msgpack has no larger int
    run.log({"y": {"z": -(2**65)}}, commit=False)
    run.log({"i": 1})
    run.summary["pinned"] = 2**66
    run.finish()
    data = runstream.read_run(run.dir)
    assert data.history[0]["x"] == float(2**70) and data.history[1]["y/z"] == -float(2**65)
    assert data.summary["pinned"] == float(2**66)


def test_log_and_summary_take_values_up_to_the_depth_limit(run: Any) -> None:
    ok, too_deep = nested(MAX_DEPTH - 2), nested(MAX_DEPTH - 1)  # the row is a level, "x" another
    lists: Any = 0
    for _ in range(MAX_DEPTH - 1):
        lists = [lists]
    run.log({"x": ok})
    run.log({"x": ok}, commit=False)
    run.log({"l": lists})
    run.summary["x"] = ok
    for row in ({"x": too_deep}, {"l": [lists]}):
        if NATIVE:  # the pure-Python build checks a plain row's depth only past 254 (see log)
            with pytest.raises(ValueError, match="nested more than 64"):
                run.log(row)
        with pytest.raises(ValueError, match="nested more than 64"):
            run.log(row, commit=False)
        with pytest.raises(ValueError, match="nested more than 64"):
            run.summary.update(row)
    run.finish()
    assert runstream.read_run(run.dir).history_rows == 2  # the pending row went with the next


def test_log_tuple_key_at_top_level_broke_every_reader_of_the_run(run: Any) -> None:
    with pytest.raises(TypeError, match=r"runstream.log: the key \(1, 2\) at the top level"):
        run.log({(1, 2): 3, "i": 0})
    run.log({1: 2.0, "i": 1})  # a number key is read back as str, as before
    run.finish()
    data = runstream.read_run(run.dir)
    assert data.history_rows == 1 and data.history[0]["1"] == 2.0


def test_notes_set_to_a_dict_was_recorded_as_a_dict(run: Any) -> None:
    run.notes = {"a": {"b": 1}}
    assert run.notes == "{'a': {'b': 1}}"
    run.finish()
    assert runstream.read_run(run.dir).run["notes"] == "{'a': {'b': 1}}"


def test_log_key_with_failing_repr_raised_the_users_exception(run: Any) -> None:
    with pytest.raises(TypeError, match=r"the key <Unprintable whose repr failed> at the top level"):
        run.log({Unprintable(): 1})


def test_values_that_are_stored_read_back(run: Any) -> None:
    run.log({"nan": float("nan"), "inf": float("inf"), "b": b"\x00\xff", "k" * 10_000: 1, "n": 2**63})
    run.config.update({"nan": float("nan"), "b": b"\x00", "n": {1: {2: 3}}})
    run.summary["deep"] = nested(MAX_DEPTH - 2)
    run.finish()
    data = runstream.read_run(run.dir)
    row = data.history[0]
    assert row["b"] == b"\x00\xff" and row["k" * 10_000] == 1 and row["inf"] == float("inf")
    assert data.config["n"] == {"1": {"2": 3}} and data.config["b"] == "b'\\x00'"


def test_check_nesting_is_iterative_and_bounded() -> None:
    check_nesting({"a": 1, "b": "x"}, "log")
    check_nesting({"a": [1, [2, {"c": 3}]]}, "log")
    with pytest.raises(ValueError, match="nested more than"):
        check_nesting({"x": [[[[]]]] * 1} | {"y": nested(100_000)}, "log")


# --- the sidecar: a record whose side effect fails is logged and counted, never fatal ---------------
def bare_sidecar(run_dir: Path) -> Any:
    """A ``Sidecar`` with just what ``handle_control`` uses (no ring, journal or loop)."""
    from runstream_ingest.sidecar.main import Sidecar

    sc = Sidecar.__new__(Sidecar)
    sc.run_dir, sc.config, sc.exit_seen, sc.record_errors, sc.config_errors = run_dir, {}, False, 0, 0
    (run_dir / "files").mkdir(parents=True)
    return sc


def control(seq: int, kind: int, value: Any) -> Any:
    from runstream.format import record as rec

    return rec.Record(seq, kind, 0, 0, 0.0, rec.pack_body(value))


def test_control_record_that_raised_killed_the_sidecar(tmp_path: Path) -> None:
    from runstream.format import record as rec

    sc = bare_sidecar(tmp_path)
    sc.handle_control(
        [
            control(1, rec.KIND_CONFIG, {"lr": 0.1}),
            control(2, rec.KIND_CONFIG, [1, 2, 3]),  # not a dict: the update raises
            control(3, rec.KIND_CONFIG, {"deep": nested(400)}),  # the YAML writer recurses too deep
            control(4, rec.KIND_CONFIG, {"after": 1}),
            control(5, rec.KIND_EXIT, {"exit_code": 0}),
        ]
    )
    assert sc.record_errors == 1 and sc.config_errors == 2 and sc.exit_seen
    text = (tmp_path / "files" / "config.yaml").read_text()
    assert text.startswith("lr: 0.1\ndeep: '<not written by runstream: RecursionError")
    assert text.endswith("after: 1\n")


# --- real processes: the sidecar survives, every other record is journaled ---------------------------
TRAIN = """
import runstream
from runstream.format import record as rec

def nested(depth):
    d = {"leaf": 1}
    for _ in range(depth):
        d = {"k": d}
    return d

try:
    runstream.init(project="p", mode="offline", config={"deep": nested(400)})
except ValueError as e:
    print("init refused:", e)
run = runstream.init(project="p", mode="offline", config={"lr": 0.1}, settings={"disable_stats": True})
for i in range(50):
    run.log({"i": i})
# What no SDK call lets through any more, written straight into the ring as an SDK without the
# checks (or another client of the format) would: a config nested 400 deep, which the YAML writer
# of config.yaml cannot take, and a file request that is junk.
run._emit(rec.KIND_CONFIG, {"deep": nested(400)})
run._emit(rec.KIND_FILE, "not a file request")
for bad in ({"x": nested(1000)}, {(1, 2): 3}, {"x": object()}):
    try:
        run.log(bad)
    except (TypeError, ValueError) as e:
        print("log refused:", type(e).__name__)
try:
    run.config.update({"deep": nested(1000)})
except ValueError as e:
    print("config refused:", type(e).__name__)
try:
    run.config["d"] = nested(70)
except ValueError as e:
    print("config refused:", type(e).__name__)
for i in range(50, 100):
    run.log({"i": i})
run.config["after"] = 1
run.finish()
"""


def test_record_the_sidecar_cannot_handle_lost_every_record_of_the_run(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(textwrap.dedent(TRAIN))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNSTREAM_", "WANDB_"))}
    proc = subprocess.run(
        [sys.executable, "train.py"],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("refused") == 6, proc.stdout
    assert "init refused: config value 'deep/k/k" in proc.stdout
    assert "sidecar exited" not in proc.stderr, proc.stderr  # never restarted: it did not die
    assert "0 lost" in proc.stderr or "lost" not in proc.stderr, proc.stderr
    wait_for(lambda: not sidecars_under(tmp_path), 30, "the sidecar to exit")
    runs = [p for p in (tmp_path / "runstream").iterdir() if p.name.startswith("run-")]
    assert len(runs) == 1, "the refused init left a run directory"
    data = runstream.read_run(runs[0])
    assert [r["i"] for r in data.history] == list(range(100))
    assert data.run["state"] == "finished"
    assert data.config["lr"] == 0.1 and data.config["after"] == 1
    log = (runs[0] / "logs" / "sidecar.log").read_text()
    assert "config.yaml: the value of key 'deep' could not be written: RecursionError" in log, log
    # config.yaml holds every other key, those set after the deep value too
    config_yaml = (runs[0] / "files" / "config.yaml").read_text()
    assert "lr: 0.1" in config_yaml and "after: 1" in config_yaml
    assert "deep: '<not written by runstream: RecursionError" in config_yaml
