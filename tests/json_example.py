"""A small JSON Schema constraint and a document it accepts: guide tests walk its string values, where the
tail tokens (quotes, escapes) have successors of their own."""

SCHEMA = {
    "json_schema": {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
}
TEXT = '{"name":"the dog park","age":42}'
