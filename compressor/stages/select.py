"""Choosing layers by module-name pattern (fnmatch), shared by the stages."""
from __future__ import annotations

import fnmatch

from compressor.errors import UserError


def _matched(names: list[str], patterns: list[str], key: str) -> list[bool]:
    """Whether each name matches some pattern. A pattern that matches nothing is a mistake the
    user should hear about (a typo would otherwise silently select or exclude nothing)."""
    for pattern in patterns:
        if not any(fnmatch.fnmatch(n, pattern) for n in names):
            raise UserError(f"pattern '{pattern}' matches no layer this stage works on", key=key)
    return [any(fnmatch.fnmatch(n, p) for p in patterns) for n in names]


def without(names: list[str], patterns: list[str], key: str = "exclude") -> list[str]:
    """`names` minus those any pattern matches."""
    return [n for n, hit in zip(names, _matched(names, patterns, key)) if not hit]


def only(names: list[str], patterns: list[str], key: str = "layers") -> list[str]:
    """`names` that some pattern matches."""
    return [n for n, hit in zip(names, _matched(names, patterns, key)) if hit]
