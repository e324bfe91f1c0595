"""Compressed request bodies: decoded within the size limit, bombs refused with 413."""

from __future__ import annotations

import gzip

import pytest

from lollms_server.api.responses.encoding import decode
from lollms_server.core.errors import BadRequestError, PayloadTooLargeError

zstandard = pytest.importorskip("zstandard")
BODY = b'{"model": "echo", "input": "hello"}'


@pytest.mark.parametrize(
    ("encoding", "pack"),
    [
        ("zstd", lambda data: zstandard.ZstdCompressor().compress(data)),
        ("gzip", gzip.compress),
        ("identity", bytes),
    ],
)
def test_bodies_are_decoded(encoding: str, pack: object) -> None:
    assert decode(pack(BODY), encoding, 1024) == BODY  # type: ignore[operator]


def test_a_zstd_frame_without_its_size_is_decoded_too() -> None:
    packed = zstandard.ZstdCompressor(write_content_size=False).compress(BODY)
    assert decode(packed, "ZSTD", 1024) == BODY


@pytest.mark.parametrize("encoding", ["zstd", "gzip"])
def test_a_decompression_bomb_stops_at_the_limit(encoding: str) -> None:
    data = b"0" * (8 * 1024 * 1024)
    packed = zstandard.ZstdCompressor().compress(data) if encoding == "zstd" else gzip.compress(data)
    assert len(packed) < 64 * 1024
    with pytest.raises(PayloadTooLargeError):
        decode(packed, encoding, 1024 * 1024)
    assert decode(packed, encoding, len(data)) == data  # exactly at the limit: accepted


@pytest.mark.parametrize("encoding", ["zstd", "gzip"])
def test_a_corrupt_body_is_a_400(encoding: str) -> None:
    with pytest.raises(BadRequestError):
        decode(b"this is not compressed", encoding, 1024)


def test_an_unknown_encoding_is_a_400() -> None:
    with pytest.raises(BadRequestError, match="br"):
        decode(BODY, "br", 1024)
