"""The AsyncAPI 3 document (`protocol/schema/asyncapi.json`, made by `wsgate schema`) parses
and validates offline with the real `@asyncapi/parser` from npm, and holds one message per
frame type of both JSON Schemas."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from web_helpers import install_npm_packages, node_binary

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = ROOT / "protocol" / "schema" / "asyncapi.json"
PARSER = ("@asyncapi/parser@3.6.3",)
CHECK = """
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
const require = createRequire(process.argv[1] + "/node_modules/");
const { Parser } = require("@asyncapi/parser");
const { document, diagnostics } = await new Parser().parse(readFileSync(process.argv[2], "utf8"));
const errors = diagnostics
  .filter((d) => d.severity === 0)
  .map((d) => `${d.path.join(".")}: ${d.message}`);
const messages = document ? document.allMessages().all().map((m) => m.name()) : [];
const operations = document ? document.operations().all().map((o) => o.action()) : [];
console.log(JSON.stringify({ errors, messages, operations }));
"""


def test_the_asyncapi_document_validates_and_has_every_frame_type():
    prefix = install_npm_packages(PARSER)
    done = subprocess.run(
        [str(node_binary()), "--input-type=module", "-e", CHECK, str(prefix), str(DOCUMENT)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["errors"] == []
    expected = set()
    for side in ("client", "server"):
        schema = json.loads((ROOT / "protocol" / "schema" / f"{side}.schema.json").read_text())
        expected |= set(schema["discriminator"]["mapping"])
    assert set(report["messages"]) == expected
    assert sorted(report["operations"]) == ["receive", "send"]
