"""The remote side of a hosted pool: leases over a real in-process pool (LocalPoolHost, the
ResourceManager's FIFO slots) with the scripted fixture binding."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from lollms_server.core.bindings import (
    BindingManager,
    CancelToken,
    MediaOutput,
    MediaRequest,
    TextChunk,
    TextRequest,
)
from lollms_server.core.config import config_from_dict
from lollms_server.core.errors import (
    BindingError,
    GenerationTimeoutError,
    NotFoundError,
    ServiceUnavailableError,
)
from lollms_server.core.pools import leases as leases_module
from lollms_server.core.pools.leases import LeaseTable
from lollms_server.core.pools.local import LocalPoolHost
from lollms_server.core.resource_manager import Pool, ResourceManager
from tests.conftest import USER_BINDINGS

MakeTable = Callable[..., Coroutine[Any, Any, LeaseTable]]


def ask(text: str = "a b c", **parameters: Any) -> TextRequest:
    return TextRequest(messages=[{"role": "user", "content": text}], parameters=parameters)


def pool_of(table: LeaseTable) -> Pool:
    return table.host.resources.pool(table.host.pool)


async def settle(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Let the loop run until ``condition()`` holds (no fixed sleeps)."""
    give_up = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < give_up, "the condition never held"
        await asyncio.sleep(0.001)


@pytest.fixture
async def make_table(tmp_path: Path) -> AsyncIterator[MakeTable]:
    """``await make_table(limit=1, queue_size=16, generation_timeout=30)``; every table is closed
    at the end of the test."""
    tables: list[LeaseTable] = []

    async def make(generation_timeout: float = 30.0, **pool: Any) -> LeaseTable:
        config = config_from_dict(
            {
                "server": {"auto_install_requirements": False},
                "paths": {"bindings_folder": str(USER_BINDINGS), "models_folder": str(tmp_path / "models")},
                "resource_manager": {
                    "pools": {"default": {"limit": 1, "queue_size": 16, "queue_timeout": 30, **pool}},
                    "generation_timeout": generation_timeout,
                },
                "bindings": {"echo": {"type": "scripted_binding"}},
            },
            base=tmp_path,
            environ={},
        )
        resources = ResourceManager(config.resource_manager)
        host = LocalPoolHost(config, "default", BindingManager(config), resources)
        table = LeaseTable(host, generation_timeout)
        tables.append(table)
        return table

    yield make
    for table in tables:
        await table.close_all()


def record_streams(binding: Any) -> list[dict[str, Any]]:
    """Wrap the binding's stream_text to see the cancel token it got and whether it was closed."""
    streams: list[dict[str, Any]] = []
    original = binding.stream_text

    async def stream_text(
        model: str, request: TextRequest, cancel: CancelToken
    ) -> AsyncGenerator[TextChunk, None]:
        seen: dict[str, Any] = {"cancel": cancel, "closed": False}
        streams.append(seen)
        try:
            async for chunk in original(model, request, cancel):
                yield chunk
        finally:
            seen["closed"] = True

    binding.stream_text = stream_text
    return streams


# ---- open / close -----------------------------------------------------------------------------
async def test_open_admits_and_holds_a_slot_with_the_model_resident(make_table: MakeTable) -> None:
    table = await make_table()
    lease = await table.open("echo", "echo")
    assert pool_of(table).active == 1, "the lease holds a slot"
    assert table.get(lease.id) is lease
    assert table.host.resources.models[("echo", "echo")].in_use == 1, "the model is resident and busy"
    admitted = lease.admitted()
    assert admitted["lease"] == lease.id and admitted["queue_wait"] == 0.0
    assert admitted["load"] >= 0.0 and admitted["native_tools"] is False


async def test_lease_deadline_is_the_generation_timeout_and_expiry_adds_the_margin(
    make_table: MakeTable,
) -> None:
    table = await make_table(generation_timeout=12.0)
    before = asyncio.get_running_loop().time()
    lease = await table.open("echo", "echo")
    assert before + 12.0 <= lease.deadline <= asyncio.get_running_loop().time() + 12.0
    assert lease.expires == pytest.approx(lease.deadline + leases_module.LEASE_MARGIN_SECONDS)


async def test_second_open_on_a_full_pool_waits_for_the_slot(make_table: MakeTable) -> None:
    table = await make_table(limit=1)
    first = await table.open("echo", "echo")
    second = asyncio.ensure_future(table.open("echo", "echo"))
    await settle(lambda: pool_of(table).queued == 1)
    assert not second.done(), "no slot is free: it waits in the queue"
    await table.close(first.id)
    lease = await asyncio.wait_for(second, 5)
    assert pool_of(table).active == 1 and pool_of(table).queued == 0
    assert lease.session.queue_wait > 0.0


async def test_open_cancelled_while_queued_leaves_the_queue(make_table: MakeTable) -> None:
    table = await make_table(limit=1)
    first = await table.open("echo", "echo")
    waiter = asyncio.ensure_future(table.open("echo", "echo"))
    await settle(lambda: pool_of(table).queued == 1)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert pool_of(table).queued == 0
    await table.close(first.id)
    assert pool_of(table).active == 0 and table.leases == {}


async def test_open_on_a_pool_without_a_queue_is_a_503_with_retry_after(make_table: MakeTable) -> None:
    table = await make_table(limit=1, queue_size=0)
    await table.open("echo", "echo")
    with pytest.raises(ServiceUnavailableError, match="queue is full") as excinfo:
        await table.open("echo", "echo")
    assert excinfo.value.status_code == 503
    assert int(excinfo.value.headers["Retry-After"]) >= 1
    assert len(table.leases) == 1 and pool_of(table).rejected == 1


async def test_open_past_a_full_queue_is_a_503(make_table: MakeTable) -> None:
    table = await make_table(limit=1, queue_size=1)
    await table.open("echo", "echo")
    queued = asyncio.ensure_future(table.open("echo", "echo"))
    await settle(lambda: pool_of(table).queued == 1)
    with pytest.raises(ServiceUnavailableError) as excinfo:
        await table.open("echo", "echo")
    assert "Retry-After" in excinfo.value.headers
    assert not queued.done(), "the queued request keeps its place"
    await table.close_all()
    await table.close((await asyncio.wait_for(queued, 5)).id)


async def test_open_of_an_unknown_instance_is_a_404_and_takes_no_slot(make_table: MakeTable) -> None:
    table = await make_table()
    with pytest.raises(NotFoundError):
        await table.open("ghost", "echo")
    assert pool_of(table).active == 0 and table.leases == {}


async def test_close_frees_the_slot_and_the_model(make_table: MakeTable) -> None:
    table = await make_table()
    lease = await table.open("echo", "echo")
    await table.close(lease.id)
    assert pool_of(table).active == 0
    assert table.host.resources.models[("echo", "echo")].in_use == 0, "the model stays loaded, idle"
    assert lease.closed.is_set() and lease.id not in table.leases


async def test_close_is_idempotent(make_table: MakeTable) -> None:
    table = await make_table(limit=2)
    lease = await table.open("echo", "echo")
    other = await table.open("echo", "echo")
    await table.close(lease.id)
    await table.close(lease.id)
    await table.close("never-opened")
    assert pool_of(table).active == 1, "a second close must not free another lease's slot"
    assert list(table.leases) == [other.id]


async def test_close_all_closes_every_lease(make_table: MakeTable) -> None:
    table = await make_table(limit=2)
    opened = [await table.open("echo", "echo") for _ in range(2)]
    await table.close_all()
    assert table.leases == {} and pool_of(table).active == 0
    assert all(lease.closed.is_set() for lease in opened)


# ---- open_with_pings ----------------------------------------------------------------------
async def test_open_with_pings_pings_while_queued_then_yields_the_lease(make_table: MakeTable) -> None:
    table = await make_table(limit=1)
    first = await table.open("echo", "echo")
    admission = table.open_with_pings("echo", "echo", 0.01)
    assert (await admission.__anext__())["waiting"], "a ping while the request waits in the queue"
    await table.close(first.id)
    while (lease := await admission.__anext__()) is None:
        pass
    assert table.get(lease.id) is lease and pool_of(table).active == 1
    await admission.aclose()
    assert lease.id in table.leases, "closing the admission after the lease came keeps the lease"


async def test_open_with_pings_closed_while_queued_leaves_the_queue(make_table: MakeTable) -> None:
    table = await make_table(limit=1)
    first = await table.open("echo", "echo")
    admission = table.open_with_pings("echo", "echo", 0.01)
    assert (await admission.__anext__())["waiting"]
    await admission.aclose()
    assert pool_of(table).queued == 0
    await table.close(first.id)
    assert pool_of(table).active == 0 and list(table.leases) == []


async def test_open_with_pings_closed_after_a_slot_was_granted_gives_it_back(make_table: MakeTable) -> None:
    table = await make_table(limit=1)
    first = await table.open("echo", "echo")
    admission = table.open_with_pings("echo", "echo", 0.01)
    assert (await admission.__anext__())["position"] == 1, "queued"
    await table.close(first.id)  # the slot goes to the waiter while the caller is not reading
    await settle(lambda: len(table.leases) == 1)
    await admission.aclose()  # the gateway left before it read the lease
    assert table.leases == {}, "the lease nobody received still holds the slot"
    assert pool_of(table).active == 0


async def test_open_with_pings_raises_the_pools_503(make_table: MakeTable) -> None:
    table = await make_table(limit=1, queue_size=0)
    await table.open("echo", "echo")
    with pytest.raises(ServiceUnavailableError):
        await table.open_with_pings("echo", "echo", 0.01).__anext__()


# ---- hold -------------------------------------------------------------------------------------
async def test_hold_returns_once_the_gateway_closes_the_lease(make_table: MakeTable) -> None:
    table = await make_table()
    lease = await table.open("echo", "echo")
    holder = asyncio.ensure_future(table.hold(lease))
    await asyncio.sleep(0)
    assert not holder.done()
    await table.close(lease.id)
    await asyncio.wait_for(holder, 1)
    assert pool_of(table).active == 0


async def test_hold_closes_an_expired_lease_and_cancels_its_calls(
    make_table: MakeTable, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(leases_module, "LEASE_MARGIN_SECONDS", 0.05)
    table = await make_table(generation_timeout=0.05)
    lease = await table.open("echo", "echo")
    streams = record_streams(lease.session.binding)
    # a gateway that stopped reading mid-stream: one chunk read, then nothing
    stream = table.stream_text(lease.id, ask("one two three"))
    assert (await stream.__anext__()).text == "one "
    assert not streams[0]["cancel"].is_set()
    holder = asyncio.ensure_future(table.hold(lease))
    await settle(lambda: streams[0]["cancel"].is_set())
    assert lease.closed.is_set(), "the lease expired by itself"
    with pytest.raises(NotFoundError):
        table.get(lease.id)
    await stream.aclose()  # the stream's connection ends
    await asyncio.wait_for(holder, 5)
    assert pool_of(table).active == 0, "the expired lease gave its slot back"


async def test_hold_of_an_already_expired_lease_closes_it_at_once(
    make_table: MakeTable, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(leases_module, "LEASE_MARGIN_SECONDS", 0.0)
    table = await make_table(generation_timeout=0.01)
    lease = await table.open("echo", "echo")
    await asyncio.sleep(0.02)
    await asyncio.wait_for(table.hold(lease), 1)
    assert table.leases == {} and pool_of(table).active == 0


# ---- calls on a lease -----------------------------------------------------------------------
async def test_stream_text_on_a_lease(make_table: MakeTable) -> None:
    table = await make_table()
    lease = await table.open("echo", "echo")
    chunks = [chunk async for chunk in table.stream_text(lease.id, ask("a b c"))]
    assert "".join(chunk.text for chunk in chunks) == "a b c "
    assert chunks[-1].finish_reason == "stop"
    assert lease.cancels == set(), "the call's cancel token is dropped when it ends"
    assert pool_of(table).active == 1, "the slot stays with the lease until it is closed"


async def test_stream_text_is_bounded_by_the_lease_deadline_and_closes_the_binding_stream(
    make_table: MakeTable,
) -> None:
    table = await make_table(generation_timeout=0.3)
    lease = await table.open("echo", "echo")
    streams = record_streams(lease.session.binding)
    received: list[str] = []
    with pytest.raises(GenerationTimeoutError) as excinfo:
        async for chunk in table.stream_text(lease.id, ask(" ".join(["word"] * 50), delay=0.1)):
            received.append(chunk.text)
    assert excinfo.value.status_code == 504
    assert 0 < len(received) < 50, "some words came before the deadline, not all"
    assert streams[0]["closed"], "the binding's stream was closed"
    assert streams[0]["cancel"].is_set(), "the binding was told to stop"
    assert lease.cancels == set()


async def test_stream_text_closed_by_the_gateway_closes_the_binding_stream(make_table: MakeTable) -> None:
    table = await make_table()
    lease = await table.open("echo", "echo")
    streams = record_streams(lease.session.binding)
    stream = table.stream_text(lease.id, ask("one two three four", delay=0.2))
    await stream.__anext__()
    await stream.aclose()
    assert streams[0]["cancel"].is_set(), "the binding was told to stop"
    assert streams[0]["closed"], "aclose() returned while the binding's stream was still open"


async def test_close_during_a_call_cancels_it(make_table: MakeTable) -> None:
    table = await make_table()
    lease = await table.open("echo", "echo")
    streams = record_streams(lease.session.binding)
    stream = table.stream_text(lease.id, ask("one two three"))
    await stream.__anext__()
    closing = asyncio.ensure_future(table.close(lease.id))
    await settle(lambda: streams[0]["cancel"].is_set())
    assert lease.closed.is_set()
    await stream.aclose()
    await asyncio.wait_for(closing, 5)
    assert pool_of(table).active == 0


async def test_close_keeps_the_slot_until_the_calls_on_the_lease_have_ended(make_table: MakeTable) -> None:
    table = await make_table()
    lease = await table.open("echo", "echo")
    stream = table.stream_text(lease.id, ask("one two three"))
    await stream.__anext__()
    closing = asyncio.ensure_future(table.close(lease.id))
    await asyncio.sleep(0.05)
    assert not closing.done() and pool_of(table).active == 1, "a slot is never freed under a running call"
    await stream.aclose()
    await asyncio.wait_for(closing, 5)
    assert pool_of(table).active == 0


async def test_generate_text_on_a_lease(make_table: MakeTable) -> None:
    table = await make_table()
    lease = await table.open("echo", "echo")
    result = await table.generate_text(lease.id, ask("x y"))
    assert result.text == "x y " and result.finish_reason == "stop"
    assert lease.cancels == set()


async def test_generate_text_is_bounded_by_the_lease_deadline(make_table: MakeTable) -> None:
    table = await make_table(generation_timeout=0.2)
    lease = await table.open("echo", "echo")
    with pytest.raises(GenerationTimeoutError):
        await table.generate_text(lease.id, ask(" ".join(["word"] * 50), delay=0.05))
    assert lease.cancels == set()


async def test_resident_calls_on_a_lease(make_table: MakeTable) -> None:
    table = await make_table()
    lease = await table.open("echo", "echo")
    assert await table.call(lease.id, "tokenize", "hi") == [104, 105]
    assert await table.call(lease.id, "detokenize", [104, 105]) == "hi"


@pytest.mark.parametrize("method", ["load_model", "unload_model", "stream_text", "__init__", "plain"])
async def test_call_rejects_methods_outside_the_resident_calls(make_table: MakeTable, method: str) -> None:
    table = await make_table()
    lease = await table.open("echo", "echo")
    with pytest.raises(BindingError, match="Unknown pool call"):
        await table.call(lease.id, method, "echo")


def patch_generate_image(binding: Any, events: list[str], hang: bool = False) -> None:
    """Give the scripted (text) binding a media method: two steps, then one image."""

    async def generate_image(
        model: str, request: MediaRequest, cancel: CancelToken, progress: Callable[[int, int], None]
    ) -> list[MediaOutput]:
        try:
            progress(1, 2)
            await asyncio.sleep(30 if hang else 0.01)
            progress(2, 2)
            return [MediaOutput("image", b"\x89PNG", "image/png", {"prompt": request.prompt})]
        finally:
            events.append("stopped")

    binding.generate_image = generate_image


async def test_media_on_a_lease_yields_progress_then_outputs(make_table: MakeTable) -> None:
    table = await make_table()
    lease = await table.open("echo", "echo")
    events: list[str] = []
    patch_generate_image(lease.session.binding, events)
    items = [item async for item in table.media(lease.id, MediaRequest(generation_type="tti", prompt="cat"))]
    assert items[:-1] == [(1, 2), (2, 2)]
    assert items[-1] == [MediaOutput("image", b"\x89PNG", "image/png", {"prompt": "cat"})]
    assert events == ["stopped"] and lease.cancels == set()


async def test_media_is_bounded_by_the_lease_deadline(make_table: MakeTable) -> None:
    table = await make_table(generation_timeout=0.2)
    lease = await table.open("echo", "echo")
    events: list[str] = []
    patch_generate_image(lease.session.binding, events, hang=True)
    with pytest.raises(GenerationTimeoutError):
        async for _ in table.media(lease.id, MediaRequest(generation_type="tti", prompt="cat")):
            pass
    assert events == ["stopped"], "the binding's call was stopped before the 504"
    assert lease.cancels == set()


async def test_media_closed_by_the_gateway_stops_the_binding_call(make_table: MakeTable) -> None:
    table = await make_table()
    lease = await table.open("echo", "echo")
    events: list[str] = []
    patch_generate_image(lease.session.binding, events, hang=True)
    items = table.media(lease.id, MediaRequest(generation_type="tti", prompt="cat"))
    assert await items.__anext__() == (1, 2)
    await items.aclose()
    assert events == ["stopped"], "aclose() returned while the binding's media call still ran"


async def test_media_with_a_text_generation_type_is_rejected(make_table: MakeTable) -> None:
    table = await make_table()
    lease = await table.open("echo", "echo")
    with pytest.raises(BindingError, match="Unknown media generation type 'ttt'"):
        await table.media(lease.id, MediaRequest(generation_type="ttt")).__anext__()


async def test_media_on_a_text_binding_answers_the_binding_error(make_table: MakeTable) -> None:
    table = await make_table()
    lease = await table.open("echo", "echo")
    with pytest.raises(BindingError, match="does not generate images"):
        async for _ in table.media(lease.id, MediaRequest(generation_type="tti", prompt="a cat")):
            pass
    assert lease.cancels == set()


@pytest.mark.parametrize("closed", [False, True])
async def test_calls_on_an_unknown_or_closed_lease_are_a_404(make_table: MakeTable, closed: bool) -> None:
    table = await make_table()
    lease_id = "0" * 24
    if closed:
        lease_id = (await table.open("echo", "echo")).id
        await table.close(lease_id)
    with pytest.raises(NotFoundError, match="closed or expired"):
        table.get(lease_id)
    with pytest.raises(NotFoundError):
        await table.stream_text(lease_id, ask()).__anext__()
    with pytest.raises(NotFoundError):
        await table.generate_text(lease_id, ask())
    with pytest.raises(NotFoundError):
        await table.call(lease_id, "tokenize", "x")
    with pytest.raises(NotFoundError):
        await table.media(lease_id, MediaRequest(generation_type="tti")).__anext__()


# ---- plain calls ------------------------------------------------------------------------------
async def test_plain_calls_need_no_slot(make_table: MakeTable) -> None:
    table = await make_table(limit=1, queue_size=0)
    await table.open("echo", "echo")  # the only slot is taken
    assert await table.plain_call("echo", "list_available_models") == [{"name": "echo"}, {"name": "other"}]
    info = await table.plain_call("echo", "get_model_info", "echo")
    assert info["model_name"] == "echo" and info["loaded"] is True
    assert info["residency"]["in_use"] == 1


async def test_model_info_of_a_model_not_loaded(make_table: MakeTable) -> None:
    table = await make_table()
    info = await table.plain_call("echo", "get_model_info", "other")
    assert info["loaded"] is False and info["residency"] is None


@pytest.mark.parametrize("method", ["load_model", "tokenize", "health_check", "close", ""])
async def test_plain_call_rejects_unknown_methods(make_table: MakeTable, method: str) -> None:
    table = await make_table()
    with pytest.raises(BindingError, match="Unknown pool call"):
        await table.plain_call("echo", method, "echo")
    assert table.host.resources.models == {}, "nothing was loaded"
