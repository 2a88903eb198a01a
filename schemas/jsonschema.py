"""JSON Schema files for producers, generated from the pydantic event models."""

import json
from pathlib import Path

from schemas.events import event_types


def export_json_schemas(directory: Path) -> list[Path]:
    """Write `<event type>.schema.json` for every event type; return the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for type_name, event_type in sorted(event_types.items()):
        schema = event_type.envelope_model.model_json_schema()
        schema["$id"] = f"urn:royalty-engine:schema:{type_name}"
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        path = directory / f"{type_name}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written
