"""Checks api/openapi.yaml's examples (tests/it/openapi.rs runs it, with the Python of
.tools/venv, where scripts/test installs jsonschema and PyYAML).

  openapi_examples.py check FILE   every example validates against its schema, and
                                   everything that should have an example has one
  openapi_examples.py json FILE    the document as JSON, for the Rust side to read

What has an example: every media type (request bodies and responses), parameter and header,
and every schema in components/schemas (the JSON Schema `examples` keyword). Each is
validated against the schema it stands beside, with JSON Schema 2020-12 (the dialect of
OpenAPI 3.1's schemas), `$ref`s resolved in the whole document. A named example
(`#/components/examples/...`) is validated wherever it is used, so each must be used once.
"""

import json
import sys

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

BASE = "urn:ccgate:openapi"


def pointer(path):
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


class Checker:
    def __init__(self, doc):
        self.doc = doc
        self.registry = Registry().with_resource(BASE, Resource(contents=doc, specification=DRAFT202012))
        self.failures = []
        self.checked = 0
        self.used_examples = set()

    def resolve(self, node):
        """A `$ref` within the document, followed (with the pointer it led to), else as is."""
        path = None
        while isinstance(node, dict) and "$ref" in node:
            ref = node["$ref"]
            if not ref.startswith("#/"):
                self.fail(ref, "only references within the document are expected")
                return node, path
            path = [p.replace("~1", "/").replace("~0", "~") for p in ref[2:].split("/")]
            node = self.doc
            for p in path:
                node = node[p]
        return node, path

    def fail(self, where, why):
        self.failures.append(f"{where}: {why}")

    def validate(self, schema_path, value, where):
        self.checked += 1
        validator = Draft202012Validator({"$ref": BASE + "#" + pointer(schema_path)}, registry=self.registry)
        for e in validator.iter_errors(value):
            at = "/".join(str(p) for p in e.absolute_path) or "(the value)"
            self.fail(where, f"{at}: {e.message}")

    def named_examples(self, examples, where):
        """`examples` of a media type, parameter or header: name -> (value, where)."""
        out = []
        for name, ex in examples.items():
            resolved, path = self.resolve(ex)
            if path is not None:
                self.used_examples.add(path[-1])
            if "value" not in resolved:
                self.fail(f"{where} examples {name}", "no `value`")
                continue
            out.append((resolved["value"], f"{where} example {name}"))
        return out

    def with_schema(self, node, path, what):
        """A media type, parameter or header: its examples against its `schema`."""
        where = pointer(path)
        if "schema" not in node:
            return
        values = []
        if "example" in node:
            values.append((node["example"], f"{where} example"))
        if "examples" in node:
            values += self.named_examples(node["examples"], where)
        if not values:
            self.fail(where, f"{what} without an example")
        for value, at in values:
            self.validate(path + ["schema"], value, at)

    def schema_examples(self, node, path):
        """JSON Schema `examples` (and OpenAPI's older `example`) at any depth of a schema."""
        if isinstance(node, list):
            for i, n in enumerate(node):
                self.schema_examples(n, path + [i])
            return
        if not isinstance(node, dict):
            return
        for ex in [node["example"]] if "example" in node else []:
            self.validate(path, ex, pointer(path) + " example")
        if isinstance(node.get("examples"), list):
            for i, ex in enumerate(node["examples"]):
                self.validate(path, ex, f"{pointer(path)} examples[{i}]")
        for key, sub in node.items():
            # Literal values, not schemas: nothing in them is a schema keyword.
            if key not in ("example", "examples", "enum", "const", "default"):
                self.schema_examples(sub, path + [key])

    def walk(self, node, path):
        if isinstance(node, list):
            for i, n in enumerate(node):
                self.walk(n, path + [i])
            return
        if not isinstance(node, dict) or "$ref" in node:
            return
        parent = path[-2] if len(path) >= 2 else None
        if parent == "content":
            self.with_schema(node, path, "media type")
        elif parent == "parameters" or (len(path) >= 1 and path[-1] != "headers" and parent == "headers"):
            self.with_schema(node, path, "parameter" if parent == "parameters" else "header")
        for key, sub in node.items():
            if key == "schema":
                self.schema_examples(sub, path + [key])
            elif key not in ("example", "examples"):
                self.walk(sub, path + [key])

    def run(self):
        self.walk(self.doc.get("paths", {}), ["paths"])
        self.walk(self.doc.get("webhooks", {}), ["webhooks"])
        components = self.doc.get("components", {})
        for section in ("responses", "headers", "requestBodies", "parameters"):
            for name, node in components.get(section, {}).items():
                if section == "headers":
                    self.with_schema(node, ["components", section, name], "header")
                else:
                    self.walk(node, ["components", section, name])
        for name, schema in components.get("schemas", {}).items():
            if "examples" not in schema and "example" not in schema:
                self.fail(pointer(["components", "schemas", name]), "schema without examples")
            self.schema_examples(schema, ["components", "schemas", name])
        for name in components.get("examples", {}):
            if name not in self.used_examples:
                self.fail(pointer(["components", "examples", name]), "used nowhere, so validated against nothing")


def main():
    mode, path = sys.argv[1], sys.argv[2]
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    if mode == "json":
        json.dump(doc, sys.stdout)
        return 0
    checker = Checker(doc)
    checker.run()
    for f in checker.failures:
        print("FAIL", f)
    print(f"{checker.checked} examples checked, {len(checker.failures)} problems")
    return 1 if checker.failures else 0


if __name__ == "__main__":
    sys.exit(main())
