"""docs/configuration.md and .env.example are generated from Settings and must agree with it."""

from __future__ import annotations

import pytest
from pydantic import Field

from app import config_docs
from app.config import Settings


def test_every_setting_has_a_description():
    assert config_docs.undocumented() == []


def test_configuration_md_table_matches_settings():
    document = config_docs.CONFIGURATION_MD.read_text(encoding="utf-8")
    assert config_docs.splice(document, config_docs.render_table()) == document, (
        "docs/configuration.md is stale: run python -m app.config_docs"
    )


def test_env_example_matches_settings():
    assert config_docs.ENV_EXAMPLE.read_text(encoding="utf-8") == (
        config_docs.render_env_example()
    ), ".env.example is stale: run python -m app.config_docs"


def test_every_variable_appears_once_in_both_files():
    table = config_docs.CONFIGURATION_MD.read_text(encoding="utf-8")
    example = config_docs.ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    for name in Settings.model_fields:
        assert table.count(f"| `{name.upper()}` |") == 1, name
        assert sum(line.startswith(f"{name.upper()}=") for line in example) == 1, name


def test_env_example_values_are_the_defaults(monkeypatch):
    """Copying .env.example to .env changes nothing: every value in it is the default."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    from_example = Settings(_env_file=config_docs.ENV_EXAMPLE)  # type: ignore[call-arg]
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    assert from_example.model_dump() == defaults.model_dump()


def test_a_field_without_description_fails_the_check():
    class WithNewField(Settings):
        new_setting: int = Field(1)

    assert config_docs.undocumented(WithNewField) == ["new_setting"]
    with pytest.raises(ValueError, match="NEW_SETTING"):
        config_docs.render_table(WithNewField)


def test_a_new_documented_field_makes_the_files_stale():
    class WithNewField(Settings):
        new_setting: int = Field(1, description="Something new.")

    document = config_docs.CONFIGURATION_MD.read_text(encoding="utf-8")
    table = config_docs.render_table(WithNewField)
    assert "| `NEW_SETTING` | `1` | Something new. |" in table
    assert config_docs.splice(document, table) != document
    assert "NEW_SETTING=1" in config_docs.render_env_example(WithNewField)


def test_splice_keeps_the_prose_around_the_markers():
    document = f"intro\n{config_docs.BEGIN}\nold\n{config_docs.END}\noutro\n"
    assert config_docs.splice(document, "new\n") == (
        f"intro\n{config_docs.BEGIN}\nnew\n{config_docs.END}\noutro\n"
    )
    with pytest.raises(ValueError, match="markers"):
        config_docs.splice("no markers here", "new\n")


def test_check_mode_reports_nothing_when_in_sync(capsys):
    assert config_docs.main(["--check"]) == 0
    assert capsys.readouterr().out == ""
