"""Recorded settings (a checkpoint's hyper-parameters, a synthetic set's manifest) and how a new run differs from them.

Both records are compared after a round trip (JSON for the manifest, ``torch.load(weights_only=True)`` for
``last.pt``), so values are first brought to that plain form: tuples become lists, numbers and strings stay,
anything else (devices, paths, dtypes) becomes its ``str``.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

__all__ = ["plain", "differences"]

#: what a key absent on one side shows as in :func:`differences`.
ABSENT = "<absent>"


def plain(value: Any) -> Any:
    """``value`` as dicts (str keys), lists, numbers, strings, bools and None: what it reads back as from JSON."""
    return json.loads(json.dumps(value, default=str))


def differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (old, new)}`` for every (nested) key whose value differs; a missing key reads :data:`ABSENT`.

    Args:
        old: the recorded values.
        new: this run's values.
        prefix: prepended to the keys (for nested dicts).

    Returns:
        the differing keys in sorted order.
    """
    out: dict[str, tuple[Any, Any]] = {}
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, ABSENT), new.get(k, ABSENT)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out.update(differences(a, b, f"{prefix}{k}."))
        elif a != b:
            out[f"{prefix}{k}"] = (a, b)
    return out
