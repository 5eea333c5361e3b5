"""Every configuration example in the docs and the README validates against the JSON schema in
docs/schemas/ (the one editors use) and parses; so do the upstream corpus files. A schema that
refused a documented short form (`gpu: A100:2`, `max_duration: 2h`) would fail here."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from dstack.core.config_parser import parse_configuration

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "docs" / "schemas" / "configuration.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
TYPES = ("task", "dev-environment", "service", "fleet", "volume", "gateway")


def _examples() -> list[tuple[str, str]]:
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for i, block in enumerate(re.findall(r"```ya?ml\n(.*?)```", path.read_text(), re.S)):
            data = yaml.safe_load(block)
            if isinstance(data, dict) and data.get("type") in TYPES:
                found.append((f"{path.name}#{i}", block))
    return found


EXAMPLES = _examples()
CORPUS = sorted((ROOT / "tests" / "core" / "upstream_configs").glob("*.dstack.yml"))


def test_the_docs_have_examples_of_each_run_type() -> None:
    assert len(EXAMPLES) >= 4
    assert {yaml.safe_load(b)["type"] for _, b in EXAMPLES} >= {"task", "dev-environment"}


@pytest.mark.parametrize(("where", "block"), EXAMPLES, ids=[w for w, _ in EXAMPLES])
def test_docs_example_validates_against_the_schema_and_parses(where: str, block: str) -> None:
    VALIDATOR.validate(yaml.safe_load(block))
    parse_configuration(block, where)


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name.removesuffix(".dstack.yml"))
def test_corpus_file_validates_against_the_schema(path: Path) -> None:
    VALIDATOR.validate(yaml.safe_load(path.read_text()))


def test_the_schema_still_refuses_what_the_parser_refuses() -> None:
    for bad in ({"type": "task", "commands": ["x"], "resorces": {}},
                {"type": "task", "commands": ["x"], "spot_policy": "sometimes"},
                {"type": "task", "commands": ["x"], "priority": "high"}):
        with pytest.raises(jsonschema.ValidationError):
            VALIDATOR.validate(bad)
