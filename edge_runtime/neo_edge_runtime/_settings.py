"""What the device's configuration parsers (``telemetry``, ``rollout``) share.

Each reads component configuration keys into a frozen dataclass whose ``updated()`` takes
a configuration update; at start, the same keys come from the environment variables the
recipe's ``Setenv`` writes. Stdlib only, Python 3.8+.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Optional, Tuple, Type


def number(error: Type[ValueError], what: str, name: str, raw: Any, low: float,
           high: float = math.inf) -> float:
    """``raw`` as a finite float from ``low`` to ``high``, else ``error`` naming the
    setting (``"<what> setting <name>"``) and the value received."""
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(raw, bool) or not math.isfinite(value) or not low <= value <= high:
        bound = f"from {low:g} to {high:g}" if math.isfinite(high) else f"at least {low:g}"
        raise error(f"{what} setting {name} must be a number {bound}; got {raw!r}")
    return value


def from_environment(cls: Any, keys: Mapping[str, Tuple[str, str]],
                     env: Optional[Mapping[str, str]] = None) -> Any:
    """``cls()`` updated with the environment variables of ``keys`` (configuration key ->
    (field, variable)); unset variables keep the defaults."""
    env = os.environ if env is None else env
    return cls().updated({key: str(env.get(var, "")).strip() for key, (_, var) in keys.items()})
