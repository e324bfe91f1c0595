"""Compressed request bodies (``Content-Encoding: zstd`` since Codex CLI 0.98, or ``gzip``).

The routes of this family use :class:`DecodingRoute`: the body is decompressed before FastAPI
parses it, and the limit of ``server.max_request_bytes`` applies to the *decoded* size too (the
request guard middleware already capped the compressed bytes), so a decompression bomb is a 413
after at most that many bytes of output, never a full inflation in memory.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute

from lollms_server.core.errors import BadRequestError, LollmsError, PayloadTooLargeError

ENCODINGS = ("zstd", "gzip", "identity")
DEFAULT_LIMIT = 40 * 1024 * 1024  # server.max_request_bytes' default, when the app has no config


def decode(raw: bytes, encoding: str, limit: int) -> bytes:
    """``raw`` decompressed, at most ``limit`` bytes of output (more: 413; corrupt: 400)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return raw
    if encoding == "zstd":
        import zstandard

        try:
            reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw))
            data = reader.read(limit + 1)
        except zstandard.ZstdError:
            raise BadRequestError("The zstd request body cannot be decompressed.") from None
    elif encoding in ("gzip", "x-gzip"):
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            data = inflater.decompress(raw, limit + 1)
        except zlib.error:
            raise BadRequestError("The gzip request body cannot be decompressed.") from None
    else:
        raise BadRequestError(
            f"Content-Encoding '{encoding[:32]}' is not supported (zstd, gzip or identity)."
        )
    if len(data) > limit:
        raise PayloadTooLargeError(
            f"The decompressed request body is larger than the limit of {limit} bytes."
        )
    return data


class DecodedRequest(Request):
    """A request whose ``body()`` is the decompressed body."""

    async def body(self) -> bytes:
        if not hasattr(self, "_body"):
            raw = await super().body()
            encoding = self.headers.get("content-encoding", "")
            config = getattr(self.app.state, "config", None)
            limit = config.server.max_request_bytes if config is not None else DEFAULT_LIMIT
            try:
                self._body = decode(raw, encoding, limit) if encoding else raw
            except LollmsError as exc:  # FastAPI turns anything else raised here into a bare 400
                raise HTTPException(exc.status_code, exc.message) from None
        return self._body


class DecodingRoute(APIRoute):
    """An API route that reads compressed bodies (see the module docstring)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def decoded(request: Request) -> Response:
            return await handler(DecodedRequest(request.scope, request.receive))

        return decoded
