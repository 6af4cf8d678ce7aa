"""Project ids and schema names (issue #2, section 4): the rule, the one-to-one mapping, and that a bad
id is refused before any SQL is sent."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from support.db import StatementCounter

from workspace_tool import InvalidProjectId, WorkspaceError, WorkspaceManager, schema_for
from workspace_tool.naming import is_project_schema, project_for, validate_schema_name

VALID = {
    "a": "project_a",
    "demo": "project_demo",
    "my-project": "project_my_project",
    "a-b-c": "project_a_b_c",
    "0": "project_0",
    "2024-q1-data": "project_2024_q1_data",
    "x" * 50: "project_" + "x" * 50,
}

INVALID = {
    "My-Project": "character 'M' is not allowed",
    "my_project": "character '_' is not allowed",
    "-demo": "it starts or ends with a hyphen",
    "demo-": "it starts or ends with a hyphen",
    "my--project": "it has two hyphens in a row",
    "x" * 51: "it is 51 characters long, more than 50",
    "": "it is empty",
    " demo": "character ' ' is not allowed",
    "demo\n": "character '\\n' is not allowed",
    "de mo": "character ' ' is not allowed",
    "dem\u043e": "character '\u043e' is not allowed",  # Cyrillic o
    "\uff44emo": "character '\uff44' is not allowed",  # fullwidth d
    "demo\u200b": "character '\\u200b' is not allowed",  # zero-width space
    "caf\u00e9": "character '\u00e9' is not allowed",
    "a.b": "character '.' is not allowed",
    'a"b': "character '\"' is not allowed",
    "a;drop": "character ';' is not allowed",
    "registry": "it is reserved",
}


@pytest.mark.parametrize(("project_id", "schema"), sorted(VALID.items()))
def test_valid_ids_map_to_their_schema(project_id: str, schema: str) -> None:
    assert schema_for(project_id) == schema
    assert len(schema) <= 58
    assert is_project_schema(schema)
    assert project_for(schema) == project_id  # one-to-one: the schema gives the id back


@pytest.mark.parametrize(("project_id", "reason"), sorted(INVALID.items()))
def test_invalid_ids_are_refused_naming_the_rule(project_id: str, reason: str) -> None:
    with pytest.raises(InvalidProjectId) as info:
        schema_for(project_id)
    message = str(info.value)
    assert reason in message
    assert "^[a-z0-9]+(-[a-z0-9]+)*$" in message
    assert "1-50 characters" in message
    assert "\n" not in message.replace("\\n", "")  # one line for the user
    assert isinstance(info.value, WorkspaceError)
    assert isinstance(info.value, ValueError)
    assert info.value.project_id == project_id


@pytest.mark.parametrize("value", [None, 42, b"demo", ["demo"], 3.5])
def test_non_strings_are_refused(value: object) -> None:
    with pytest.raises(InvalidProjectId, match=f"it is a {type(value).__name__}, not a string"):
        schema_for(value)


def test_mapping_is_one_to_one_over_many_ids() -> None:
    ids = ["a", "a-b", "ab", "a-b-c", "ab-c", "a-bc", "abc", "1-2", "12"]
    schemas = [schema_for(i) for i in ids]
    assert len(set(schemas)) == len(ids)
    assert [project_for(s) for s in schemas] == ids


@pytest.mark.parametrize(
    "schema",
    ["public", "project_", "project_registry", "project_My", "project__a", "project_a_", "project_" + "x" * 51, 7],
)
def test_bad_schema_names_are_refused(schema: object) -> None:
    assert not (isinstance(schema, str) and is_project_schema(schema))
    with pytest.raises(WorkspaceError, match="invalid project schema name"):
        validate_schema_name(schema)


@pytest.mark.parametrize("project_id", ["Bad", "my_project", "registry", "-x", "x" * 51, ""])
def test_no_sql_is_sent_for_a_bad_id(
    manager: WorkspaceManager, count_statements: Callable[[], StatementCounter], project_id: str
) -> None:
    with count_statements() as counter:
        with pytest.raises(InvalidProjectId):
            manager.ensure(project_id)
        with pytest.raises(InvalidProjectId):
            manager.ensure(project_id, verify=True)
        with pytest.raises(InvalidProjectId):
            manager.drop(project_id)
        with pytest.raises(InvalidProjectId):
            manager.status([project_id])
    assert counter.statements == []
