"""W&B's public surface (docs/compatibility.md): every module-level name and ``Run`` attribute of
wandb exists in runstream, in-scope ones work, the rest raise ``NotSupportedError`` -- and under
``mode="disabled"`` every one is a quiet no-op.

The list of W&B's names is data (tests/sdk/wandb_public_names.txt, read from wandb's source),
never an import of wandb, which is not installed.
"""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import runstream
from runstream.disabled import DisabledRun
from runstream.format import record as rec
from runstream.format.journal_read import JournalReader
from runstream.settings import resolve_settings
from tests.support.server import ServerProc, start_server

pytestmark = pytest.mark.usefixtures("finish_active_run")

NAMES_FILE = Path(__file__).with_name("wandb_public_names.txt")


def wandb_names() -> dict[str, list[tuple[str, str]]]:
    """The names file's sections: ``{"module": [(name, ""), ...], "run": [(name, kind), ...]}``."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in NAMES_FILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        assert current is not None, f"{NAMES_FILE}: a name before any [section]: {line!r}"
        name, _, kind = line.partition(" ")
        current.append((name, kind.strip()))
    return sections


MODULE_NAMES = [n for n, _ in wandb_names()["module"]] + [n for n, _ in wandb_names()["submodules"]]
RUN_MEMBERS = wandb_names()["run"]


def offline(tmp_path: Path, **kw: Any) -> runstream.Run:
    run = runstream.init(mode="offline", dir=tmp_path, project="surface", **kw)
    assert isinstance(run, runstream.Run)
    return run


def disabled_run(tmp_path: Path) -> DisabledRun:
    run = runstream.init(mode="disabled", dir=tmp_path, project="surface")
    assert isinstance(run, DisabledRun)
    return run


def records(run_dir: str, kind: int) -> list[Any]:
    return [r.value() for r in JournalReader(Path(run_dir) / "journal").iter_records() if r.kind == kind]


# --- the lists --------------------------------------------------------------------------------
def test_the_names_file_is_wandb_s_surface_not_a_stub() -> None:
    # Guards the data itself: a truncated or emptied file would make the checks below vacuous.
    assert len(MODULE_NAMES) >= 80 and len(RUN_MEMBERS) >= 50
    for must in ("init", "log", "Artifact", "sweep", "Image", "termlog", "restore", "__version__"):
        assert must in MODULE_NAMES
    kinds = dict(RUN_MEMBERS)
    assert kinds["url"] == "property" and kinds["log_code"] == "method"


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_every_wandb_module_name_exists_in_runstream(name: str) -> None:
    assert hasattr(runstream, name), f"runstream lacks wandb.{name} (docs/compatibility.md)"


def test_run_has_every_wandb_run_attribute(tmp_path: Path) -> None:
    run = offline(tmp_path)
    missing = [n for n, _ in RUN_MEMBERS if not hasattr(run, n)]
    assert not missing, f"runstream.Run lacks {missing}"
    values = [n for n, kind in RUN_MEMBERS if kind != "method" and callable(getattr(run, n))]
    assert not values, f"W&B properties that are callables on runstream.Run: {values}"
    calls = [n for n, kind in RUN_MEMBERS if kind == "method" and not callable(getattr(run, n))]
    assert not calls, f"W&B methods that are not callable on runstream.Run: {calls}"


def test_disabled_run_has_every_wandb_run_attribute_as_a_value_or_a_call(tmp_path: Path) -> None:
    run = disabled_run(tmp_path)
    # A DisabledRun answers any unknown name with a no-op function; a W&B *property* must be a
    # value instead (``if run.sweep_id:`` must not be true because a function is).
    values = [n for n, kind in RUN_MEMBERS if kind != "method" and callable(getattr(run, n))]
    assert not values, f"W&B properties that are functions on DisabledRun: {values}"
    assert all(callable(getattr(run, n)) for n, kind in RUN_MEMBERS if kind == "method")


# --- Run attributes that work ---------------------------------------------------------------
def test_offline_run_state_attributes(tmp_path: Path) -> None:
    run = offline(tmp_path)
    assert (run.offline, run.disabled, run.resumed, run.starting_step) == (True, False, False, 0)
    assert run.url is None and run.project_url is None and run.get_url() is None
    assert run.sweep_id is None and run.sweep_url is None
    assert run.sync_dir == run.dir and run.project_name() == "surface"
    settings = run.settings
    assert settings.mode == "offline" and settings.project == "surface"
    settings.project = "changed"  # a copy: the run keeps its own
    assert run.settings.project == "surface"
    run.config.lr = 0.1
    assert run.config_static.lr == 0.1 and run.config_static["lr"] == 0.1


def test_resumed_run_reports_resumed_and_its_starting_step(tmp_path: Path) -> None:
    first = offline(tmp_path, id="resume01")
    for i in range(3):
        first.log({"x": i})
    first.finish()
    again = offline(tmp_path, id="resume01", resume="allow")
    assert again.resumed is True and again.starting_step == 3 and again.step == 3


def test_save_without_arguments_returns_true_and_keeps_nothing(tmp_path: Path) -> None:
    run = offline(tmp_path)
    assert run.save() is True
    assert runstream.save() is True
    run.finish()
    assert records(run.dir, rec.KIND_FILE) == []


def test_mark_preempting_is_kept_in_the_run_metadata(tmp_path: Path) -> None:
    run = offline(tmp_path)
    runstream.mark_preempting()
    run.finish()
    assert runstream.read_run(run.dir).run["preempting"] is True


def test_log_code_keeps_python_files_under_code_and_skips_run_and_venv_dirs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    for rel, text in {
        "train.py": "print('train')\n",
        "pkg/model.py": "W = 1\n",
        "pkg/weights.bin": "binary",
        ".venv/lib/site.py": "venv\n",
        "runstream/old.py": "old run dir\n",
        "requirements.txt": "numpy\n",
    }.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    monkeypatch.chdir(src)
    run = offline(tmp_path / "out")
    kept = run.log_code(".", exclude_fn=lambda path, root: path.endswith("requirements.txt"))
    assert kept == ["code/train.py", "code/pkg/model.py"]
    assert run.log_code(".", include_fn=lambda path: path.endswith(".md")) is None
    run.finish()
    files = Path(run.dir) / "files" / "code"
    assert (files / "pkg" / "model.py").read_text() == "W = 1\n"
    assert sorted(p.relative_to(files).as_posix() for p in files.rglob("*") if p.is_file()) == [
        "pkg/model.py",
        "train.py",
    ]


def test_write_logs_goes_to_the_run_s_console_records(tmp_path: Path) -> None:
    run = offline(tmp_path)
    run.write_logs("first line\nsecond line")
    run.finish()
    run.write_logs("after finish: ignored, as in W&B")
    lines = [line for r in records(run.dir, rec.KIND_CONSOLE) for line in r["lines"]]
    assert "first line" in lines and "second line" in lines
    assert not any("after finish" in line for line in lines)


def test_status_counts_records_written_and_pending(tmp_path: Path) -> None:
    run = offline(tmp_path)
    before = run.status().sync_items_total
    for i in range(5):
        run.log({"x": i})
    status = run.status()
    assert status.sync_items_total == before + 5
    assert 0 <= status.sync_items_pending <= status.sync_items_total


# --- finished runs and before init -------------------------------------------------------------
FINISHED_PROBE = """
import runstream
run = runstream.init(mode="offline", dir={dir!r})
run.log({{"a": 1}})
run.finish()
for name, call in [
    ("log", lambda: run.log({{"a": 2}})),
    ("log nested", lambda: run.log({{"a": {{"b": [1, 2]}}}})),
    ("log step", lambda: run.log({{"a": 2}}, step=9)),
    ("log pending", lambda: run.log({{"a": 2}}, commit=False)),
    ("config attr", lambda: setattr(run.config, "x", 1)),
    ("config update", lambda: run.config.update({{"y": 2}})),
    ("summary item", lambda: run.summary.__setitem__("z", 1)),
    ("summary update", lambda: run.summary.update({{"z": 1}})),
    ("name", lambda: setattr(run, "name", "renamed")),
]:
    try:
        call()
        print(name, "NO ERROR", sep="|")
    except runstream.UsageError as e:
        print(name, "UsageError " + str("is finished" in str(e)), sep="|")
    except Exception as e:
        print(name, f"{{type(e).__name__}} {{e}}", sep="|")
print("config", dict(run.config), sep="|")
"""


@pytest.mark.parametrize("pure", ["", "1"], ids=["native", "pure-python"])
def test_every_write_to_a_finished_run_raises_usage_error_saying_so(tmp_path: Path, pure: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNSTREAM_", "WANDB_"))}
    env["RUNSTREAM_PURE_PYTHON"] = pure
    out = subprocess.run(
        [sys.executable, "-c", FINISHED_PROBE.format(dir=str(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    lines = dict(line.split("|", 1) for line in out.stdout.splitlines() if "|" in line)
    assert lines.pop("config") == "{}"  # the refused config write stored nothing
    assert lines and all(v == "UsageError True" for v in lines.values()), lines


def test_config_before_init_raises_for_attribute_and_item_writes() -> None:
    with pytest.raises(runstream.UsageError, match=r"runstream\.config\.x: call runstream\.init"):
        runstream.config.x = 1
    with pytest.raises(runstream.UsageError, match=r"call runstream\.init"):
        runstream.config["x"] = 1
    with pytest.raises(runstream.UsageError, match=r"log_artifact\(\) was called before runstream\.init\(\)"):
        runstream.log_artifact("model.pt")


# --- not supported: a clear error, and a no-op when disabled -----------------------------------
# Lambdas, not the callables themselves: the names are looked up when each test runs (for the
# integration stand-ins, looking an attribute up is what raises).
NOT_SUPPORTED_MODULE_CALLS: list[tuple[str, Any]] = [
    ("Artifact", lambda: runstream.Artifact("data", type="dataset")),
    ("sweep", lambda: runstream.sweep({"method": "grid"})),
    ("agent", lambda: runstream.agent("sweep-id", function=print, count=1)),
    ("controller", lambda: runstream.controller("sweep-id")),
    ("attach", lambda: runstream.attach("run-id")),
    ("Graph", lambda: runstream.Graph()),  # noqa: PLW0108
    ("JoinedTable", lambda: runstream.JoinedTable(None, None, "id")),
    ("EvalTable", lambda: runstream.EvalTable()),  # noqa: PLW0108
    ("InternalApi", lambda: runstream.InternalApi()),  # noqa: PLW0108
    ("visualize", lambda: runstream.visualize("wandb/line/v0", None)),
    ("keras", lambda: runstream.keras.WandbCallback()),  # noqa: PLW0108
    ("api", lambda: runstream.api.viewer()),  # noqa: PLW0108
    ("tensorflow", lambda: runstream.tensorflow.log),
    ("sagemaker_auth", lambda: runstream.sagemaker_auth(path=".")),
]
NOT_SUPPORTED_RUN_CALLS = [
    "log_artifact",
    "use_artifact",
    "link_artifact",
    "upsert_artifact",
    "finish_artifact",
    "log_model",
    "use_model",
    "link_model",
    "pin_config_keys",
]


@pytest.mark.parametrize(
    ("name", "call"), NOT_SUPPORTED_MODULE_CALLS, ids=[n for n, _ in NOT_SUPPORTED_MODULE_CALLS]
)
def test_a_missing_feature_raises_not_supported_naming_it(name: str, call: Any) -> None:
    with pytest.raises(
        runstream.NotSupportedError, match=rf"runstream\.{name}.*not supported by runstream yet; "
    ) as e:
        call()
    assert isinstance(e.value, runstream.Error)


def test_run_artifact_calls_raise_not_supported_and_say_what_to_do(tmp_path: Path) -> None:
    run = offline(tmp_path)
    for name in NOT_SUPPORTED_RUN_CALLS:
        with pytest.raises(runstream.NotSupportedError, match=rf"Run\.{name}: .* not supported") as e:
            getattr(run, name)("model.pt")
        assert "runstream yet; " in str(e.value)  # followed by what to do instead
    with pytest.raises(runstream.NotSupportedError, match=r"run\.save\(path, policy='now'\)"):
        runstream.log_artifact("model.pt")  # the module-level twin forwards to the active run


@pytest.mark.parametrize(
    ("name", "call"), NOT_SUPPORTED_MODULE_CALLS, ids=[n for n, _ in NOT_SUPPORTED_MODULE_CALLS]
)
def test_under_disabled_mode_a_missing_feature_is_a_quiet_no_op(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], name: str, call: Any
) -> None:
    disabled_run(tmp_path)
    call()
    assert capfd.readouterr().err == ""


def test_disabled_run_artifact_and_media_calls_return_harmless_objects(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    run = disabled_run(tmp_path)
    art = runstream.Artifact("data", type="dataset")
    art.add_file("missing.csv")  # no file, no error: nothing happens
    assert isinstance(run.log_artifact(art), runstream.Artifact)
    used = runstream.use_artifact("data:latest")
    assert isinstance(used, runstream.Artifact) and used.download() is not None  # Inert, usable
    assert isinstance(run.use_model("model:latest"), str)
    assert isinstance(runstream.sweep({"method": "grid"}), str)
    runstream.alert(title="t", text="x")
    runstream.mark_preempting()
    image = runstream.Image(np.zeros((4, 4, 3), dtype=np.uint8))
    chart = runstream.plot_table("wandb/line/v0", runstream.Table(columns=["x"], data=[[1]]), {"x": "x"})
    run.log({"img": image, "hist": runstream.Histogram([1, 2, 3]), "chart": chart})
    assert run.status().sync_items_total == 0 and run.to_html() == "" and run.display() is False
    assert capfd.readouterr().err == ""
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_wandb_mode_disabled_in_the_environment_quiets_stand_ins_before_init(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert runstream.Artifact("data", type="dataset").add_dir("x") is not None
    assert runstream.agent("sweep", function=print) is None
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_DISABLED", "true")
    runstream.Artifact("data", type="dataset")
    monkeypatch.delenv("WANDB_DISABLED")
    with pytest.raises(runstream.NotSupportedError):
        runstream.Artifact("data", type="dataset")


# --- module-level helpers that work -------------------------------------------------------------
def test_settings_accepts_wandb_keywords_and_init_takes_it(tmp_path: Path) -> None:
    s = runstream.Settings(start_method="thread", run_name="from-settings", silent=True)
    assert s.name == "from-settings" and s.silent is True
    run = runstream.init(mode="offline", dir=tmp_path, settings=s)
    assert run.name == "from-settings"
    with pytest.raises(runstream.SettingsError, match=r"unknown setting 'projekt'.*Did you mean 'project'"):
        runstream.Settings(projekt="x")


def test_setup_resolves_settings_and_teardown_finishes_the_active_run(tmp_path: Path) -> None:
    setup = runstream.setup({"mode": "offline", "project": "from-setup"})
    assert setup.settings.mode == "offline" and setup.settings.project == "from-setup"
    run = offline(tmp_path)
    runstream.teardown()
    assert runstream.run is None
    assert runstream.read_run(run.dir).run["state"] == "finished"
    assert runstream.join is runstream.finish


def test_term_functions_print_prefixed_lines_and_respect_silent(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    runstream.termlog("hello\nworld")
    runstream.termwarn("careful")
    runstream.termerror("broken")
    runstream.termlog("no prefix", prefix=False)
    once = f"once only {os.getpid()} {id(capsys)}"  # repeat=False remembers messages per process
    runstream.termlog(once, repeat=False)
    runstream.termlog(once, repeat=False)
    assert capsys.readouterr().err.splitlines() == [
        "runstream: hello",
        "runstream: world",
        "runstream: WARNING careful",
        "runstream: ERROR broken",
        "no prefix",
        f"runstream: {once}",
    ]
    monkeypatch.setenv("WANDB_SILENT", "true")
    runstream.termlog("quiet")
    runstream.termwarn("quiet")
    runstream.termerror("errors still show")
    assert capsys.readouterr().err == "runstream: ERROR errors still show\n"


def test_require_accepts_wandb_s_legacy_features_and_refuses_unknown_ones() -> None:
    runstream.require("service")
    runstream.require(["core", "service"])
    runstream.require(None)
    with pytest.raises(runstream.NotSupportedError, match=r"unknown requirement.*'teleport'"):
        runstream.require("teleport")


def test_small_helpers() -> None:
    ident = runstream.util.generate_id()
    assert len(ident) == 8 and ident.isalnum() and ident == ident.lower()
    assert runstream.patched == {"tensorboard": [], "keras": [], "gym": []}
    assert runstream.ensure_configured() is None
    assert runstream.PublicApi is runstream.Api and runstream.CommError is runstream.ApiError
    assert runstream.Config is type(runstream.init(mode="disabled").config)
    assert runstream.ArtifactTTL.INHERIT is not None and isinstance(runstream.__version__, str)


def test_classes_and_box3d() -> None:
    classes = runstream.Classes([{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}])
    assert classes.to_json() == {
        "_type": "classes",
        "class_set": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    }
    with pytest.raises(ValueError, match=r"class_set\[0\] needs both 'id' and 'name'"):
        runstream.Classes([{"id": 1}])
    box = runstream.box3d(
        center=(1, 2, 3), size=(2, 4, 6), orientation=(1, 0, 0, 0), color=(1, 0, 0), label="b"
    )
    assert box["corners"][0] == (0.0, 0.0, 0.0) and box["corners"][7] == (2.0, 4.0, 6.0)
    assert box["label"] == "b" and box["color"] == (1.0, 0.0, 0.0) and box["score"] is None
    # A quarter turn about z (quaternion [1, 0, 0, 1], not normalised), in W&B's row-vector
    # convention (corner @ R): the corner (+1, -1, -1) goes to (+1, +1, -1).
    turned = runstream.box3d(center=(0, 0, 0), size=(2, 2, 2), orientation=(2, 0, 0, 2), color=(0, 0, 1))
    corners = np.array(turned["corners"])
    assert np.allclose(np.abs(corners), 1.0)
    assert np.allclose(corners[4], [1, 1, -1])  # product order: index 4 is (+1, -1, -1)
    with pytest.raises(ValueError, match="zero quaternion"):
        runstream.box3d(center=(0, 0, 0), size=(1, 1, 1), orientation=(0, 0, 0, 0), color=(0, 0, 0))


def test_box3d_boxes_are_logged_in_an_object3d_scene(tmp_path: Path) -> None:
    run = offline(tmp_path)
    box = runstream.box3d(
        center=(0, 0, 0), size=(1, 1, 1), orientation=(1, 0, 0, 0), color=(1, 0, 0), label="car"
    )
    run.log({"scene": runstream.Object3D.from_point_cloud(np.zeros((4, 3)), [box])})
    run.finish()
    pointer = runstream.read_run(run.dir).last_row["scene"]
    scene = (Path(run.dir) / "files" / pointer["path"]).read_text()
    assert '"car"' in scene and '"corners"' in scene


def test_plot_table_logs_a_custom_chart(tmp_path: Path) -> None:
    run = offline(tmp_path)
    table = runstream.Table(columns=["x", "y"], data=[[1, 2], [2, 4]])
    run.log({"curve": runstream.plot_table("wandb/line/v0", table, {"x": "x", "y": "y"}, {"title": "t"})})
    run.finish()
    assert "curve_table" in runstream.read_run(run.dir).history_keys
    with pytest.raises(TypeError, match=r"data_table must be a runstream\.Table"):
        runstream.plot_table("wandb/line/v0", [[1, 2]], {"x": "x"})


# --- against a real server --------------------------------------------------------------------
def test_online_run_urls_point_at_the_dashboard_and_restore_fetches_a_saved_file(
    tmp_path: Path, server: ServerProc, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNSTREAM_HOST", server.url)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights.txt").write_text("w=1\n")
    run = runstream.init(dir=tmp_path / "runs", project="surface")
    assert run.offline is False
    entity = getpass.getuser()
    assert run.url == f"{server.url}/#/r/{entity}/surface/{run.id}"
    assert run.project_url == f"{server.url}/#/p/{entity}/surface"
    assert f"src={run.url!r}" in run.to_html()
    with urllib.request.urlopen(run.url.split("#")[0], timeout=10) as resp:  # the dashboard's page
        assert resp.status == 200 and "html" in resp.headers["content-type"]
    run.save("weights.txt", policy="now")
    path = run.path
    run.finish()

    api = runstream.Api()
    assert api.default_entity == entity
    assert [r.id for r in api.runs("surface")] == [run.id]  # the default entity's project
    assert api.run(f"surface/{run.id}").id == run.id

    restored = runstream.restore("weights.txt", run_path=path, root=tmp_path / "restored")
    assert restored is not None
    with restored:
        assert restored.read() == "w=1\n"
    (tmp_path / "restored" / "weights.txt").write_text("local copy\n")
    with runstream.restore("weights.txt", run_path=path, root=tmp_path / "restored") as kept:
        assert kept.read() == "local copy\n"  # already there and not replace=True: not fetched
    with pytest.raises(runstream.NotFoundError, match=r"no file 'nothing\.txt'"):
        runstream.restore("nothing.txt", run_path=path, root=tmp_path / "restored")
    with pytest.raises(ValueError, match="run_path is required"):
        runstream.restore("weights.txt")


def test_default_entity_is_the_api_key_s_entity_on_a_server_with_auth(tmp_path: Path) -> None:
    from runstream_ingest.server.args import DB_NAME
    from runstream_ingest.server.auth.keys import KeyStore

    with KeyStore(tmp_path / DB_NAME) as ks:
        key = ks.create("team-a")[1]
    srv = start_server(tmp_path, "--auth")
    try:
        api = runstream.Api(srv.url, api_key=key)
        assert api.default_entity == "team-a"
        assert len(api.runs("p")) == 0  # team-a/p: allowed for this key (another entity's: 403)
        with pytest.raises(runstream.UnauthorizedError):
            _ = runstream.Api(srv.url, api_key="rsk_" + "0" * 39).default_entity
    finally:
        srv.stop()


def test_comm_error_is_what_an_unreachable_server_raises(tmp_path: Path) -> None:
    api = runstream.Api("http://127.0.0.1:9", timeout=2)
    with pytest.raises(runstream.CommError, match="could not be reached"):
        api.projects("anyone")


def test_default_entity_without_a_key_follows_init_s_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    api = runstream.Api("http://127.0.0.1:9")
    assert api.default_entity == resolve_settings().entity == getpass.getuser()
    monkeypatch.setenv("WANDB_ENTITY", "team-b")
    assert runstream.Api("http://127.0.0.1:9").default_entity == "team-b"
