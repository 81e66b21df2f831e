"""Settings: defaults, the precedence of sources, environment parsing and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from runstream.errors import SettingsError, UsageError
from runstream.settings import MiB, Settings, resolve_settings


@pytest.fixture(autouse=True)
def in_tmp_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # conftest's clean_env has removed RUNSTREAM_*/WANDB_*; runs made here land in tmp_path.
    monkeypatch.chdir(tmp_path)


def test_defaults(tmp_path: Path) -> None:
    s = resolve_settings()
    assert s.mode == "online"
    assert s.root_dir == tmp_path
    assert s.project == "uncategorized"
    assert s.entity  # the OS user, or "local"
    assert (s.run_id, s.name, s.notes, s.group, s.job_type, s.host) == (None,) * 6
    assert s.tags == () and s.silent is False
    assert (s.ring_size, s.overflow_size, s.batch_bytes) == (64 * MiB, 64 * MiB, 1 * MiB)
    assert (s.batch_age, s.fsync, s.fsync_interval, s.step_regression) == (0.1, "group", 1.0, "warn")
    assert (s.finish_timeout, s.sidecar_memory, s.zstd_level, s.stats_interval) == (60.0, 256 * MiB, 3, 2.0)
    assert Settings.names()[:3] == ("mode", "root_dir", "project")
    assert set(Settings.names()) == set(s.as_dict())
    assert (s.disable_stats, s.console, s.disable_code, s.disable_git, s.save_code) == (
        False, "auto", False, False, False,
    )  # fmt: skip
    assert s.ignore_globs == ()
    assert (s.x_label, s.x_primary, s.x_update_finish_state) == (None, None, True)  # W&B shared mode
    assert len(Settings.names()) == 33


def test_context_capture_settings_read_runstream_and_wandb_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WANDB_DISABLE_CODE", "true")
    monkeypatch.setenv("RUNSTREAM_IGNORE_GLOBS", "*.ckpt, secrets/*")
    monkeypatch.setenv("WANDB_CONSOLE", "wrap_emu")
    s = resolve_settings(settings={"x_stats_sampling_interval": 0.5})
    assert s.disable_code is True and s.ignore_globs == ("*.ckpt", "secrets/*")
    assert s.console == "wrap" and s.stats_interval == 0.5
    with pytest.raises(SettingsError, match=r"stats_interval=0.05 .*at least 0.1 seconds"):
        resolve_settings(settings={"stats_interval": 0.05})
    with pytest.raises(SettingsError, match=r"console='tee'"):
        resolve_settings(settings={"console": "tee"})


def test_precedence_argument_settings_runstream_env_wandb_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_settings().project == "uncategorized"
    monkeypatch.setenv("WANDB_PROJECT", "from-wandb")
    assert resolve_settings().project == "from-wandb"
    monkeypatch.setenv("RUNSTREAM_PROJECT", "from-runstream")
    assert resolve_settings().project == "from-runstream"
    assert resolve_settings(settings={"project": "from-settings"}).project == "from-settings"
    assert resolve_settings(project="from-arg", settings={"project": "from-settings"}).project == "from-arg"


def test_wandb_disabled_true_disables_unless_a_mode_is_named() -> None:
    assert resolve_settings(environ={"WANDB_DISABLED": "true"}).mode == "disabled"
    assert resolve_settings(environ={"WANDB_DISABLED": "false"}).mode == "online"
    assert resolve_settings(environ={"WANDB_DISABLED": "true", "WANDB_MODE": "offline"}).mode == "offline"
    assert resolve_settings(mode="offline", environ={"WANDB_DISABLED": "true"}).mode == "offline"


def test_environ_argument_replaces_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNSTREAM_PROJECT", "ignored")
    assert resolve_settings(environ={"WANDB_PROJECT": "p"}).project == "p"


@pytest.mark.parametrize(
    ("var", "value", "field", "expected"),
    [
        ("WANDB_MODE", "offline", "mode", "offline"),
        ("WANDB_MODE", "dryrun", "mode", "offline"),
        ("RUNSTREAM_MODE", "Disabled", "mode", "disabled"),
        ("WANDB_ENTITY", "team", "entity", "team"),
        ("WANDB_RUN_ID", "abc123", "run_id", "abc123"),
        ("WANDB_NAME", "my run", "name", "my run"),
        ("WANDB_TAGS", "a, b,,c", "tags", ("a", "b", "c")),
        ("WANDB_NOTES", "note", "notes", "note"),
        ("WANDB_RUN_GROUP", "g1", "group", "g1"),
        ("RUNSTREAM_GROUP", "g2", "group", "g2"),
        ("WANDB_JOB_TYPE", "eval", "job_type", "eval"),
        ("WANDB_SILENT", "true", "silent", True),
        ("RUNSTREAM_HOST", "http://ingest:8080", "host", "http://ingest:8080"),
        ("WANDB_BASE_URL", "http://wandb.local", "host", "http://wandb.local"),
        ("RUNSTREAM_RING_SIZE", "16MiB", "ring_size", 16 * MiB),
        ("RUNSTREAM_FSYNC", "always", "fsync", "always"),
        ("RUNSTREAM_BATCH_AGE", "0.5", "batch_age", 0.5),
        ("RUNSTREAM_ZSTD_LEVEL", "9", "zstd_level", 9),
    ],
)
def test_environment_variables(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, field: str, expected: object
) -> None:
    monkeypatch.setenv(var, value)
    assert getattr(resolve_settings(), field) == expected


def test_dir_from_env_and_argument_is_made_absolute(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WANDB_DIR", "runs")
    assert resolve_settings().root_dir == tmp_path / "runs"
    assert resolve_settings(dir="other").root_dir == tmp_path / "other"
    assert resolve_settings(settings={"dir": "/abs"}).root_dir == Path("/abs")


def test_wandb_host_is_not_the_server_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_HOST", "gpu-box-7")  # W&B: the machine's display name
    assert resolve_settings().host is None


def test_empty_env_var_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNSTREAM_PROJECT", "")
    monkeypatch.setenv("WANDB_PROJECT", "w")
    assert resolve_settings().project == "w"


@pytest.mark.parametrize("raw", ["true", "1", "YES", "On"])
def test_true_booleans(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("WANDB_SILENT", raw)
    assert resolve_settings().silent is True


@pytest.mark.parametrize("raw", ["false", "0", "No", "OFF"])
def test_false_booleans(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("RUNSTREAM_SILENT", raw)
    monkeypatch.setenv("WANDB_SILENT", "true")  # RUNSTREAM_ wins
    assert resolve_settings().silent is False


def test_bad_boolean_names_variable_and_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_SILENT", "maybe")
    with pytest.raises(SettingsError, match=r"silent='maybe'.*WANDB_SILENT.*true or false"):
        resolve_settings()


def test_unknown_settings_key_suggests_a_close_match() -> None:
    with pytest.raises(SettingsError) as info:
        resolve_settings(settings={"rng_size": 1 * MiB})
    msg = str(info.value)
    assert "'rng_size'" in msg and "Did you mean 'ring_size'" in msg and "fsync_interval" in msg


def test_wandb_settings_keys_are_accepted() -> None:
    s = resolve_settings(
        settings={"start_method": "thread", "run_name": "n", "run_tags": ["t"], "base_url": "h"}
    )
    assert (s.name, s.tags, s.host) == ("n", ("t",), "h")


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"mode": "sometimes"}, r"mode='sometimes'.*argument mode=.*'online', 'offline', 'disabled'"),
        ({"settings": {"ring_size": 1000}}, r"ring_size=1000.*>= 65536 \(64 KiB\).*multiple of 8"),
        ({"settings": {"ring_size": 64 * 1024 + 4}}, r"ring_size=65540.*multiple of 8"),
        ({"settings": {"overflow_size": -1}}, r"overflow_size=-1.*>= 0"),
        ({"settings": {"batch_bytes": True}}, r"batch_bytes=True"),
        ({"settings": {"fsync": "sometimes"}}, r"fsync='sometimes'.*'group', 'always', 'never'"),
        ({"settings": {"step_regression": "ignore"}}, r"step_regression='ignore'.*'warn', 'raise'"),
        ({"settings": {"batch_age": -0.1}}, r"batch_age=-0.1.*>= 0"),
        ({"settings": {"fsync_interval": 0}}, r"fsync_interval=0.*> 0"),
        ({"settings": {"stats_interval": float("nan")}}, r"stats_interval=nan"),
        ({"settings": {"zstd_level": 30}}, r"zstd_level=30.*from 1 to 22"),
        ({"project": "a/b"}, r"project='a/b'.*without '/'"),
        ({"tags": ["ok", ""]}, r"tags=.*non-empty"),
    ],
)
def test_bad_values_name_setting_value_and_what_is_allowed(kwargs: dict[str, object], pattern: str) -> None:
    with pytest.raises(SettingsError, match=pattern):
        resolve_settings(**kwargs)  # type: ignore[arg-type]


def test_bad_env_size_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNSTREAM_RING_SIZE", "lots")
    with pytest.raises(SettingsError, match="RUNSTREAM_RING_SIZE"):
        resolve_settings()


def test_bad_run_id_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UsageError, match="invalid run id"):
        resolve_settings(run_id="has space")
    monkeypatch.setenv("WANDB_RUN_ID", "a/b")
    with pytest.raises(UsageError, match="WANDB_RUN_ID"):
        resolve_settings()


def test_settings_instance_contributes_its_non_default_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    s = resolve_settings(settings=Settings(silent=True, project="p"))
    assert (s.silent, s.project, s.mode) == (True, "p", "offline")
    assert resolve_settings(project="q", settings=Settings(project="p")).project == "q"


def test_settings_constructor_validates_and_normalises() -> None:
    assert Settings(mode="dryrun").mode == "offline"
    assert Settings(tags=["a"]).tags == ("a",)  # type: ignore[arg-type]
    with pytest.raises(SettingsError, match="ring_size"):
        Settings(ring_size=-8)
    with pytest.raises(SettingsError, match="settings= must be a dict"):
        resolve_settings(settings=[("mode", "offline")])  # type: ignore[arg-type]


def test_tags_argument_forms() -> None:
    assert resolve_settings(tags=["a", "b"]).tags == ("a", "b")
    assert resolve_settings(tags="one,tag").tags == ("one,tag",)  # a str argument is one tag
