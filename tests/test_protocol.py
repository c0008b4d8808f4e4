"""The protocol documents agree with the code: schemas, fixtures and PROTOCOL.md's tables.

PROTOCOL.md marks its machine-checked tables with `<!-- NAME:begin -->` / `<!-- NAME:end -->`
comments; the first cell of each row is the key (an error code, a close code, a setting).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, get_args

import jsonschema
import msgspec
import pytest

from wsgate.cli import main
from wsgate.config import Settings
from wsgate.core.errors import ERROR_CODES, CloseCode
from wsgate.core.frames import (
    STREAM_ID_PATTERN,
    ChatRequest,
    FinishReason,
    Message,
    StartOptions,
    json_schemas,
)

ROOT = Path(__file__).parents[1]
PROTOCOL_DIR = ROOT / "protocol"
SCHEMA_DIR = PROTOCOL_DIR / "schema"
DOC = (PROTOCOL_DIR / "PROTOCOL.md").read_text(encoding="utf-8")
FIXTURES = sorted((PROTOCOL_DIR / "fixtures" / "conversations").glob("*.json"))
SCHEMAS = {
    name: json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text(encoding="utf-8"))
    for name in ("client", "server")
}
VALIDATORS = {name: jsonschema.Draft202012Validator(s) for name, s in SCHEMAS.items()}


def table(name: str) -> list[list[str]]:
    """The body rows of a marked table in PROTOCOL.md, as lists of stripped cells."""
    match = re.search(rf"<!-- {name}:begin -->\n(.*?)<!-- {name}:end -->", DOC, re.DOTALL)
    assert match is not None, f"PROTOCOL.md has no marked table {name!r}"
    lines = [line for line in match.group(1).splitlines() if line.startswith("|")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return rows[2:]  # header and separator


def unquote(cell: str) -> str:
    return cell.strip("`")


def frame_types(schema: dict[str, Any]) -> set[str]:
    """The `type` tags of every frame in a direction's schema."""
    tags = set()
    for ref in schema["anyOf"]:
        definition = schema["$defs"][ref["$ref"].rsplit("/", 1)[1]]
        tags.update(definition["properties"]["type"]["enum"])
    return tags


def test_the_committed_schemas_equal_the_generated_ones():
    assert main(["schema", "--check", "--out", str(SCHEMA_DIR)]) == 0


def test_the_committed_schemas_are_the_frames_json_schemas():
    assert json_schemas() == SCHEMAS


@pytest.mark.parametrize("name", ["client", "server"])
def test_each_schema_is_a_valid_draft_2020_12_schema(name):
    jsonschema.Draft202012Validator.check_schema(SCHEMAS[name])


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_every_frame_of_every_conversation_fixture_validates_against_its_schema(path):
    steps = json.loads(path.read_text(encoding="utf-8"))["steps"]
    for step in steps:
        if "expect" in step:
            VALIDATORS["server"].validate(step["expect"])
        elif isinstance(step.get("send"), dict):
            VALIDATORS["client"].validate(step["send"])
        elif "closed" in step:
            assert isinstance(step["closed"], int)


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_raw_string_sends_in_fixtures_are_deliberately_invalid_frames(path):
    steps = json.loads(path.read_text(encoding="utf-8"))["steps"]
    for step in steps:
        raw = step.get("send")
        if not isinstance(raw, str):
            continue
        try:
            frame = json.loads(raw)
        except json.JSONDecodeError:
            continue
        assert not VALIDATORS["client"].is_valid(frame), f"send it as an object: {raw}"


def test_the_error_code_table_lists_exactly_the_wire_error_codes():
    rows = table("error-codes")
    codes = [unquote(row[0]) for row in rows]
    assert sorted(codes) == sorted(ERROR_CODES)
    assert len(codes) == len(set(codes))


def test_the_error_code_table_states_each_codes_retryability():
    for row in table("error-codes"):
        assert row[1] in {"yes", "no"}, row
        assert (row[1] == "yes") == ERROR_CODES[unquote(row[0])].retryable, row


def test_the_close_code_table_lists_every_close_code():
    listed = {row[0] for row in table("close-codes")}
    missing = {str(int(code)) for code in CloseCode} - listed
    assert not missing
    assert {"4000\u20134499", "4500\u20134999"} <= listed  # en dashes, as typeset


def test_the_limits_table_states_the_configured_defaults():
    defaults = Settings()
    rows = table("limits")
    assert rows
    for row in rows:
        section, field = unquote(row[0]).split(".")
        value = getattr(getattr(defaults, section), field)
        assert float(unquote(row[1])) == value, row
    documented = {unquote(row[0]) for row in rows}
    assert {f"limits.{f}" for f in msgspec.structs.asdict(defaults.limits)} <= documented


@pytest.mark.parametrize("direction", ["client", "server"])
def test_every_frame_type_of_the_schema_has_a_section_in_protocol_md(direction):
    headings = [line for line in DOC.splitlines() if line.startswith("#")]
    for tag in frame_types(SCHEMAS[direction]):
        assert any(f"`{tag}`" in heading for heading in headings), tag


@pytest.mark.parametrize("struct", [ChatRequest, Message, StartOptions])
def test_every_request_field_is_documented(struct):
    for field in msgspec.structs.fields(struct):
        assert f"| `{field.name}` |" in DOC, f"{struct.__name__}.{field.name}"


def test_every_finish_reason_is_documented():
    for reason in get_args(FinishReason):
        assert f"| `{reason}` |" in DOC, reason


def test_protocol_md_states_the_stream_id_pattern_of_the_frames():
    assert f"`{STREAM_ID_PATTERN}`" in DOC
