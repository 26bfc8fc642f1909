"""Building one command's config from another's, or from parsed flags, by field name."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


def config_from(cls: type[T], source: Any, **overrides: Any) -> T:
    """A ``cls`` dataclass filled from the same-named attributes of ``source`` (an argparse
    namespace or another config), then ``overrides``; fields neither has keep their default."""
    values = {f.name: getattr(source, f.name) for f in fields(cls) if hasattr(source, f.name)}
    return cls(**(values | overrides))
