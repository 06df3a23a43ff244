"""Reading a whole HTTP body with a size cap, the one way every client and handler here does it.

``StreamReader.read(n)`` returns as soon as *some* bytes have arrived, up to ``n``: a body that
comes in more than one piece (any body under load, or larger than a socket buffer) is cut short,
and JSON cut short does not decode. Read to the end instead, and stop once past the cap.
"""

from __future__ import annotations

from aiohttp import StreamReader


async def read_at_most(stream: StreamReader, limit: int) -> tuple[bytes, bool]:
    """The body, read to its end or to ``limit`` bytes, whichever comes first; the second item
    is True when the body is longer than ``limit`` (what is past it is left unread, and the
    first item holds the first ``limit`` bytes)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in stream.iter_any():
        if size + len(chunk) > limit:
            chunks.append(chunk[: limit - size])
            return b"".join(chunks), True
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks), False
