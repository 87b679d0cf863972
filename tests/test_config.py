"""Settings precedence and errors: flags > env > file > defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from labalign.config import Settings, commented_defaults, load_settings
from labalign.errors import ConfigError


def test_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    assert s.teacher.model == "default"
    assert s.documents.chunk_tokens == 500
    assert s.cache_dir.name == "labalign"


def test_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "labalign.yaml").write_text(
        "teacher:\n  model: from-file\n  context_window: 4096\ndocuments:\n  chunk_tokens: 300\n"
    )
    assert load_settings().teacher.model == "from-file"
    monkeypatch.setenv("LABALIGN_TEACHER__MODEL", "from-env")
    monkeypatch.setenv("LABALIGN_DOCUMENTS__CHUNK_TOKENS", "200")
    s = load_settings(overrides={"documents.chunk_tokens": 100})
    assert (s.teacher.model, s.teacher.context_window, s.documents.chunk_tokens) == ("from-env", 4096, 100)


def test_bad_value_in_file_names_line(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("teacher:\n  model: x\n  context_window: 12\n")
    with pytest.raises(ConfigError) as info:
        load_settings(f)
    assert (info.value.path, info.value.line) == (str(f), 3)
    assert "teacher.context_window" in str(info.value)


def test_unknown_key_in_file(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("# comment\nteachr:\n  model: x\n")
    with pytest.raises(ConfigError, match="teachr") as info:
        load_settings(f)
    assert info.value.line == 2


def test_bad_env_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LABALIGN_TEACHER__CONTEXT_WINDOW", "lots")
    with pytest.raises(ConfigError, match="LABALIGN_TEACHER__CONTEXT_WINDOW"):
        load_settings()


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher: [\n")
    with pytest.raises(ConfigError, match="syntax"):
        load_settings(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(listy)


def test_commented_defaults_round_trip(tmp_path: Path) -> None:
    text = commented_defaults()
    assert "# Teacher model" in text
    f = tmp_path / "labalign.yaml"
    f.write_text(text)
    loaded = load_settings(f)
    expected = Settings()
    assert loaded.model_dump(exclude={"cache_dir"}) == expected.model_dump(exclude={"cache_dir"})
    assert loaded.cache_dir == Path("~/.cache/labalign").expanduser()
    assert set(yaml.safe_load(text)) == set(Settings.model_fields)
