"""Settings: defaults < TOML file < ROYALTY_* environment < flags, bounds, unknown keys, renamed settings."""

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from royalty.config import ConfigError, Settings, deprecated_settings, load_settings, setting_bounds
from tests.conftest import royalty_command


@pytest.fixture(autouse=True)
def clean_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No royalty.toml of the checkout and no ROYALTY_* setting of the machine leaks into a test."""
    monkeypatch.chdir(tmp_path)
    for name in [*Settings.model_fields, *deprecated_settings, "config"]:
        monkeypatch.delenv(f"ROYALTY_{name.upper()}", raising=False)


def _toml(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# (setting, TOML text of its value, env text, flag value, and the values each layer gives)
layers = [
    ("batch_records_max", "10", "20", 30, (50_000, 10, 20, 30)),  # int
    ("metrics_port", "9001", "9002", 9003, (None, 9001, 9002, 9003)),  # optional int
    ("topics", '["a", "b"]', "c, d", ("e",), (("inference-events",), ("a", "b"), ("c", "d"), ("e",))),  # tuple
    ("group_id", '"toml-group"', "env-group", "flag-group", (None, "toml-group", "env-group", "flag-group")),
    ("log_format", '"text"', "json", "text", ("auto", "text", "json", "text")),  # a choice
]


@pytest.mark.parametrize(("name", "toml_value", "env_value", "flag_value", "expected"), layers)
def test_each_layer_overrides_the_one_below(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    toml_value: str,
    env_value: str,
    flag_value: Any,
    expected: tuple[Any, Any, Any, Any],
) -> None:
    """Pins the precedence for settings of each type: default, then TOML, then ROYALTY_*, then a flag."""
    assert getattr(load_settings(), name) == expected[0]
    config = _toml(tmp_path / "royalty.toml", f"{name} = {toml_value}\n")
    assert getattr(load_settings(config_path=config), name) == expected[1]
    assert getattr(load_settings(), name) == expected[1]  # royalty.toml in the working directory is read too
    monkeypatch.setenv(f"ROYALTY_{name.upper()}", env_value)
    assert getattr(load_settings(config_path=config), name) == expected[2]
    assert getattr(load_settings({name: flag_value}, config), name) == expected[3]
    assert getattr(load_settings({name: None}, config), name) == expected[2]  # None: the flag was not given


def test_an_empty_variable_unsets_an_optional_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`ROYALTY_METRICS_PORT=` unsets the port the TOML file set; a number from TOML text is still a number."""
    config = _toml(tmp_path / "r.toml", 'metrics_port = 9000\nbatch_records_max = "77"\n')
    monkeypatch.setenv("ROYALTY_METRICS_PORT", "")
    settings = load_settings(config_path=config)
    assert (settings.metrics_port, settings.batch_records_max) == (None, 77)


def test_an_unknown_toml_key_is_refused_listing_the_valid_ones(tmp_path: Path) -> None:
    """A typo in the file is an error naming the key, the file and every valid setting, not a silent default."""
    config = _toml(tmp_path / "r.toml", "batch_record_max = 5\n")
    with pytest.raises(ConfigError) as refused:
        load_settings(config_path=config)
    message = str(refused.value)
    assert "unknown setting `batch_record_max`" in message and config in message
    assert all(name in message for name in Settings.model_fields)


def test_a_missing_or_malformed_file_and_a_bad_type_are_one_line_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each names where the value came from."""
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(config_path=str(tmp_path / "absent.toml"))
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(config_path=_toml(tmp_path / "bad.toml", "lake = \n"))
    monkeypatch.setenv("ROYALTY_BATCH_RECORDS_MAX", "many")
    with pytest.raises(ConfigError, match=r"`batch_records_max` from environment \(ROYALTY_BATCH_RECORDS_MAX\)"):
        load_settings()
    with pytest.raises(ConfigError, match="unknown setting `no_such`"):
        load_settings({"no_such": 1})


def test_a_variable_close_to_a_setting_name_is_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A likely typo in the environment is warned about (and ignored); other ROYALTY_* variables are not ours."""
    monkeypatch.setenv("ROYALTY_BATCH_RECORD_MAX", "5")
    monkeypatch.setenv("ROYALTY_FAULT_SEED", "1")
    assert load_settings().batch_records_max == 50_000
    err = capsys.readouterr().err
    assert "ROYALTY_BATCH_RECORD_MAX is not a setting" in err and "ROYALTY_BATCH_RECORDS_MAX" in err
    assert "FAULT_SEED" not in err


def test_settings_that_may_carry_a_password_stay_out_of_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Settings object printed or logged by mistake shows no DSN or RPC URL (they may embed a password)."""
    monkeypatch.setenv("ROYALTY_LAKE", "postgresql://owner:hunter2@db/ledger")
    monkeypatch.setenv("ROYALTY_READER_LAKE", "postgresql://reader:hunter3@db/ledger")
    monkeypatch.setenv("ROYALTY_RPC_URL", "https://node.example/v1/hunter4")
    settings = load_settings()
    assert settings.lake.endswith("@db/ledger") and "hunter" not in repr(settings) and "hunter" not in str(settings)


@pytest.mark.parametrize("name", sorted(setting_bounds))
def test_every_bound_is_inclusive_and_refused_past_it(name: str) -> None:
    """Each numeric setting takes both its bounds and refuses one past either, with a message giving the range."""
    low, high = setting_bounds[name]
    assert getattr(load_settings({name: low}), name) == low
    assert getattr(load_settings({name: high}), name) == high
    for bad in (low - 1, high + 1):
        with pytest.raises(ConfigError) as refused:
            load_settings({name: bad})
        assert str(refused.value) == f"setting `{name}` is {bad:,}; it must be from {low:,} to {high:,}"


def test_the_renamed_query_setting_still_works_from_the_file_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`query_seconds_max` in TOML sets `query_s_max` and warns naming the new name; the new name wins."""
    assert load_settings(config_path=_toml(tmp_path / "old.toml", "query_seconds_max = 7\n")).query_s_max == 7
    assert "setting `query_seconds_max` in file" in capsys.readouterr().err
    both = _toml(tmp_path / "both.toml", "query_seconds_max = 7\nquery_s_max = 9\n")
    assert load_settings(config_path=both).query_s_max == 9
    assert "name it `query_s_max`" in capsys.readouterr().err
    assert load_settings({"query_seconds_max": 4}, both).query_s_max == 4  # a caller passing the old name
    assert "setting `query_seconds_max` in flags is deprecated" in capsys.readouterr().err


def test_the_renamed_query_variable_still_works_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """ROYALTY_QUERY_SECONDS_MAX overrides the file, yields to ROYALTY_QUERY_S_MAX and a flag, and warns."""
    config = _toml(tmp_path / "r.toml", "query_s_max = 5\n")
    monkeypatch.setenv("ROYALTY_QUERY_SECONDS_MAX", "8")
    assert load_settings(config_path=config).query_s_max == 8
    assert "ROYALTY_QUERY_SECONDS_MAX is deprecated; set ROYALTY_QUERY_S_MAX" in capsys.readouterr().err
    assert load_settings({"query_s_max": 3}, config).query_s_max == 3
    monkeypatch.setenv("ROYALTY_QUERY_S_MAX", "9")
    assert load_settings(config_path=config).query_s_max == 9
    monkeypatch.delenv("ROYALTY_QUERY_S_MAX")
    monkeypatch.setenv("ROYALTY_QUERY_SECONDS_MAX", "99999")
    with pytest.raises(ConfigError, match=r"`query_s_max` is 99,999; it must be from 1 to 3,600"):
        load_settings()  # the new name is unset: the old one's value is checked under the new name


def test_the_renamed_until_idle_flag_still_works_hidden_with_a_warning(tmp_path: Path) -> None:
    """`ingest --until-idle S` runs as `--until-idle-s S` and warns; `--help` shows only the new flag."""
    lake = str(tmp_path / "lake")
    old = royalty_command("ingest", "--from-file", "-", "--lake", lake, "--until-idle", "0")
    result = subprocess.run(old, capture_output=True, text=True, input="")
    assert result.returncode == 0, result.stderr
    assert "--until-idle is deprecated; use --until-idle-s" in result.stderr and "ingested 0 messages" in result.stderr
    new = royalty_command("ingest", "--from-file", "-", "--lake", lake, "--until-idle-s", "0")
    result = subprocess.run(new, capture_output=True, text=True, input="")
    assert result.returncode == 0 and "deprecated" not in result.stderr, result.stderr
    both = subprocess.run([*new, "--until-idle", "1"], capture_output=True, text=True, input="")
    assert both.returncode == 2 and "give --until-idle-s only" in both.stderr
    shown = subprocess.run(
        royalty_command("ingest", "--help"), capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}
    )
    assert "--until-idle-s" in shown.stdout and "--until-idle " not in shown.stdout
