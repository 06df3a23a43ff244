"""Kubernetes resource quantities (``500m``, ``256Mi``, ``1.5e3``) as plain floats.

The grammar is the one of ``k8s.io/apimachinery/pkg/api/resource``: an optionally signed decimal
number followed by a binary suffix (Ki..Ei), a decimal suffix (n, u, m, k, M, G, T, P, E) or a
decimal exponent (``e3``, ``E-2``). CPU quantities are returned in cores, memory in bytes.
"""

from __future__ import annotations

import functools
import math
import re

from extender.errors import InputError

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": 1e-9,
    "u": 1e-6,
    "m": 1e-3,
    "": 1.0,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
}
_QUANTITY = re.compile(
    r"^(?P<num>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?:(?P<exp>[eE][+-]?[0-9]+)|(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?)$"
)
#: Longest quantity string we parse. The API server's own limit is far lower in practice; this
#: only bounds the regex work on hostile input.
MAX_QUANTITY_LENGTH = 64


class QuantityError(InputError):
    """A string that is not a Kubernetes resource quantity."""


def parse_quantity(text: str | int | float) -> float:
    """Return the value of a quantity; raise :class:`QuantityError` if it is malformed.

    Negative values, NaN and infinities are rejected: no resource in a pod or node can be negative.
    """
    if type(text) is str:
        return _parse_text(text)
    return _parse(text)


@functools.lru_cache(maxsize=4096)
def _parse_text(text: str) -> float:
    # A cluster uses a few hundred distinct quantity strings ("500m", "256Mi"), parsed for every
    # container of every pod decoded: memoized. Errors are not cached (lru_cache re-raises).
    return _parse(text)


def _parse(text: str | int | float) -> float:
    if isinstance(text, bool):
        raise QuantityError(f"invalid quantity {text!r}: expected a string or number")
    if isinstance(text, int | float):
        try:
            value = float(text)
        except OverflowError:
            # A JSON integer of hundreds of digits: beyond any float. Not printed (str() of an
            # int past 4,300 digits raises too): its size in bits says enough.
            bits = text.bit_length() if isinstance(text, int) else 0
            raise QuantityError(
                f"invalid quantity: an integer of {bits} bits is out of range"
            ) from None
    else:
        if not isinstance(text, str) or len(text) > MAX_QUANTITY_LENGTH:
            raise QuantityError(f"invalid quantity {str(text)[:MAX_QUANTITY_LENGTH]!r}")
        match = _QUANTITY.match(text.strip())
        if match is None:
            raise QuantityError(f"invalid quantity {text!r}")
        number = float(match["num"])
        if match["exp"] is not None:
            try:
                value = number * 10.0 ** int(match["exp"][1:])
            except OverflowError:
                raise QuantityError(f"invalid quantity {text!r}: out of range") from None
        else:
            suffix = match["suffix"] or ""
            value = number * (_BINARY.get(suffix) or _DECIMAL[suffix])
    if not math.isfinite(value) or value < 0:
        raise QuantityError(f"invalid quantity {text!r}: must be finite and not negative")
    return value
