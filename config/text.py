"""Text from outside (an imported file, a webhook's payload) as PostgreSQL can store it."""

import math


def text_clean(value: str) -> str:
    """PostgreSQL stores neither NUL nor lone surrogates: drop the one, replace the other."""
    value = value.replace("\x00", "")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def json_clean(value):
    """JSON kept as it came: every string and key cleaned as text, a number JSON cannot write (NaN,
    Infinity) None (the parser bounds the depth)."""
    if isinstance(value, str):
        return text_clean(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {text_clean(str(k)): json_clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_clean(v) for v in value]
    return value


def json_storable(value) -> bool:
    """Whether PostgreSQL's jsonb takes the value as it is: no NUL or lone surrogate in a string
    or key, no NaN or Infinity (which Python's json module reads and writes)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return text_clean(value) == value
    if isinstance(value, dict):
        return all(json_storable(str(k)) and json_storable(v) for k, v in value.items())
    if isinstance(value, list):
        return all(json_storable(v) for v in value)
    return True
