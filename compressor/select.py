"""Choosing layers by module-name pattern (fnmatch), shared by the stages."""
from __future__ import annotations

import fnmatch

from compressor.errors import UserError


def without(names: list[str], patterns: list[str], key: str = "exclude") -> list[str]:
    """`names` minus those any pattern matches. A pattern that matches nothing is a mistake
    the user should hear about (a typo would otherwise silently exclude nothing)."""
    for pattern in patterns:
        if not any(fnmatch.fnmatch(n, pattern) for n in names):
            raise UserError(f"pattern '{pattern}' matches no layer this stage works on", key=key)
    return [n for n in names if not any(fnmatch.fnmatch(n, p) for p in patterns)]
