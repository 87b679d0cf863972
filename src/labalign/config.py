"""All settings in one pydantic model.

Precedence: defaults < labalign.yaml (or --config FILE) < LABALIGN_* environment < flags.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from labalign import yamlsafe
from labalign.errors import ConfigError
from labalign.paths import default_cache_dir
from labalign.settings.llm import LLMSettings
from labalign.settings.sdg import SDGSettings
from labalign.settings.train import TrainSettings

CONFIG_FILE_NAME = "labalign.yaml"
ENV_PREFIX = "LABALIGN_"
ENV_NESTED = "__"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TeacherSettings(_Section):
    model: str = Field(
        "default",
        description="Teacher model: 'default' (embedded Gemma 3 270M), a .gguf file, a Hugging Face "
        "model directory, or an OpenAI-compatible URL such as http://localhost:8000/v1.",
    )
    context_window: int = Field(
        32768, ge=512, description="Teacher context window in tokens; seed examples must fit in it."
    )
    max_new_tokens: int = Field(
        1024, ge=16, description="Tokens reserved for the teacher's answer when checking the window."
    )


class TaxonomySettings(_Section):
    path: Path = Field(Path("taxonomy"), description="Taxonomy root folder.")
    include_foundational: bool = Field(
        False, description="Also read leaves under foundational_skills/ (InstructLab skips them)."
    )
    strict: bool = Field(False, description="Treat lint and quality warnings as errors.")
    offline: bool = Field(False, description="Do not fetch remote document repositories.")
    max_context_words: int = Field(500, ge=1, description="Warn on knowledge contexts longer than this.")
    max_answer_words: int = Field(250, ge=1, description="Warn on answers longer than this.")
    yamllint_config: str = Field(
        "{extends: relaxed, rules: {line-length: disable}}",
        description="yamllint configuration (InstructLab's default).",
    )


class DocumentSettings(_Section):
    chunk_tokens: int = Field(500, ge=16, description="Token budget of a knowledge document chunk.")
    tokenizer: str | None = Field(
        None,
        description="tokenizer.json or Hugging Face model directory used to count chunk tokens; "
        "unset: a conservative estimate.",
    )
    max_file_mb: float = Field(50.0, gt=0, description="Largest knowledge document file accepted.")
    allowed_roots: list[Path] = Field(
        default_factory=list,
        description="Folders outside the taxonomy that a knowledge leaf's local `repo:` (or file:// URL) "
        "may point into; by default only the taxonomy's own folder is allowed.",
    )


class Settings(BaseSettings):
    """Every labalign setting. Sections map to YAML mappings and LABALIGN_SECTION__KEY variables."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED,
        extra="forbid",
        validate_default=True,
    )

    cache_dir: Path = Field(default_factory=default_cache_dir, description="Cache folder.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log verbosity.")
    teacher: TeacherSettings = Field(default_factory=TeacherSettings)
    taxonomy: TaxonomySettings = Field(default_factory=TaxonomySettings)
    documents: DocumentSettings = Field(default_factory=DocumentSettings)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    sdg: SDGSettings = Field(default_factory=SDGSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        file_data = _FILE_DATA.get() or {}
        return (init_settings, env_settings, InitSettingsSource(settings_cls, init_kwargs=file_data))

    @field_validator("cache_dir", mode="after")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()


# The config file's contents for the Settings() call in progress: pydantic-settings builds its
# sources from the class, so the file reaches the lowest-priority source through this variable.
_FILE_DATA: ContextVar[dict[str, Any] | None] = ContextVar("labalign_config_file_data", default=None)


def find_config_file(explicit: Path | None) -> Path | None:
    """--config FILE if given (must exist), else ./labalign.yaml if present."""
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError("config file not found", path=explicit, hint="check the --config path")
        return explicit
    local = Path.cwd() / CONFIG_FILE_NAME
    return local if local.is_file() else None


def load_settings(
    config_file: Path | None = None,
    overrides: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
) -> Settings:
    """Build the effective settings; every problem becomes a one-line ConfigError naming its source.

    `defaults` (dotted keys, e.g. a `labalign run` profile) sit just above the built-in defaults:
    the config file, the environment and `overrides` (flags) all win over them."""
    path = find_config_file(config_file)
    doc: yamlsafe.YamlDocument | None = None
    data: dict[str, Any] = {}
    if path is not None:
        try:
            doc = yamlsafe.load(path)
        except yamlsafe.YamlError as exc:
            raise ConfigError(
                exc.message, path=path, line=exc.line, column=exc.column, hint=exc.hint
            ) from exc
        if doc.data is not None and not isinstance(doc.data, dict):
            raise ConfigError("config file must be a mapping of settings", path=path, line=1, column=1)
        data = doc.data or {}
    if defaults:
        data = _merge(_nest({k: v for k, v in defaults.items() if v is not None}), data)
    clean_overrides = _nest({k: v for k, v in (overrides or {}).items() if v is not None})
    token = _FILE_DATA.set(data)
    try:
        return Settings(**clean_overrides)
    except ValidationError as exc:
        raise _explain(exc, path, doc, clean_overrides) from exc
    finally:
        _FILE_DATA.reset(token)


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    """{'teacher.model': x} -> {'teacher': {'model': x}} so flags can name nested settings."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        parts = key.split(".")
        cursor = out
        for part in parts[:-1]:
            cursor = cursor.setdefault(part, {})
        cursor[parts[-1]] = value
    return out


def _merge(low: dict[str, Any], high: dict[str, Any]) -> dict[str, Any]:
    """Nested dicts merged key by key, `high` winning."""
    out = dict(low)
    for key, value in high.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _explain(
    exc: ValidationError, path: Path | None, doc: yamlsafe.YamlDocument | None, overrides: dict[str, Any]
) -> ConfigError:
    """Name where the first bad value came from: a flag, an env variable, or a line of the file."""
    err = exc.errors()[0]
    loc = [p for p in err["loc"] if isinstance(p, str | int)]
    dotted = ".".join(str(p) for p in loc)
    message = f"setting '{dotted}': {err['msg']}"
    if _lookup(overrides, loc):
        return ConfigError(message, hint="check the command-line flag")
    env_name = ENV_PREFIX + ENV_NESTED.join(str(p) for p in loc).upper()
    if any(k.upper() == env_name for k in os.environ):
        return ConfigError(message, hint=f"check the environment variable {env_name}")
    if doc is not None and path is not None:
        node, key = yamlsafe.node_at(doc.root, list(loc))
        line, col = yamlsafe.position(key or node)
        return ConfigError(message, path=path, line=line, column=col, hint="see 'labalign config init'")
    return ConfigError(message)


def _lookup(data: dict[str, Any], loc: list[str | int]) -> bool:
    cursor: Any = data
    for part in loc:
        if not isinstance(cursor, dict) or part not in cursor:
            return False
        cursor = cursor[part]
    return True


def commented_defaults() -> str:
    """A labalign.yaml with every setting at its default, each preceded by its description."""
    lines = [
        "# labalign settings. Precedence: command-line flags > LABALIGN_* env > this file > defaults.",
        "# Env names: LABALIGN_<KEY> or LABALIGN_<SECTION>__<KEY>, e.g. LABALIGN_TEACHER__MODEL.",
        "",
    ]
    defaults = Settings.model_construct().model_dump(mode="json")
    defaults["cache_dir"] = "~/.cache/labalign"  # machine-specific default: keep the file portable
    for name, field in Settings.model_fields.items():
        value = defaults[name]
        if isinstance(value, dict):
            section_model = field.annotation
            lines.append(f"{name}:")
            sub_fields = getattr(section_model, "model_fields", {})
            for key, sub_value in value.items():
                desc = sub_fields[key].description if key in sub_fields else None
                if desc:
                    lines.append(f"  # {desc}")
                lines.append("  " + _dump_scalar(key, sub_value))
            lines.append("")
        else:
            if field.description:
                lines.append(f"# {field.description}")
            lines.append(_dump_scalar(name, value))
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _dump_scalar(key: str, value: Any) -> str:
    return yaml.safe_dump({key: value}, default_flow_style=False, sort_keys=False, width=1000).rstrip()


def settings_as_yaml(settings: Settings) -> str:
    return yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False, width=1000)
