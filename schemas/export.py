"""Export the JSON Schema of every event of the contract from `ledger/events.py`.

`python -m schemas.export` writes `schemas/json/`; `python -m schemas.export --check` exits 1
when the committed files differ from the models (CI runs the same check as a test).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from ledger.events import COMPONENT_BODIES, ENVELOPES, LedgerEvent

OUT = Path(__file__).resolve().parent / "json"


def schemas() -> dict[str, dict[str, Any]]:
    """File name -> schema: one per event type, the whole envelope union, one per policy body."""
    out: dict[str, dict[str, Any]] = {}
    union = TypeAdapter(LedgerEvent).json_schema(mode="validation")
    union["title"] = "LedgerEvent"
    union["description"] = "Any event of the drg-ledger contract v1 (EVENTS.md), told apart by event_type."
    out["ledger-event.schema.json"] = union
    for name, cls in ENVELOPES.items():
        out[f"events/{name}.schema.json"] = cls.model_json_schema(mode="validation")
    for component, body in COMPONENT_BODIES.items():
        out[f"policy-bodies/{component.value}.schema.json"] = body.model_json_schema(mode="validation")
    for schema in out.values():
        schema.setdefault("$schema", "https://json-schema.org/draft/2020-12/schema")
    return out


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for name, schema in schemas().items():
        path = OUT / name
        text = render(schema)
        if check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if check and stale:
        print("schemas out of date (run python -m schemas.export):", ", ".join(stale))
        return 1
    if not check:
        print(f"wrote {len(schemas())} schema files under {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
