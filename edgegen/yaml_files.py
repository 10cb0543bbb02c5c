"""YAML as the user's files hold it: PyYAML's safe loader, refusing a key given twice in one mapping
(PyYAML would keep the last one silently, so a target or request file would not say what it seems to)."""

from __future__ import annotations

from typing import Any

import yaml


class _UniqueKeyLoader(yaml.SafeLoader):
    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice; keep one",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml(text: str) -> Any:
    """Parse YAML text (yaml.YAMLError, with line and column, on bad syntax or a repeated key)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)
