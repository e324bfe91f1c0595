"""Continuous batching for one llama.cpp model: many sequences decoded together.

One :class:`BatchEngine` per loaded model owns its ``llama_context`` (``parallel`` sequences, each
with its own KV cells: ``n_ctx`` tokens per sequence, ``n_ctx * parallel`` in all) and one decode
thread. Each step the thread merges into one ``llama_batch``:

1. the next token of every sequence that is generating (one token each), then
2. prompt tokens of sequences still reading their prompt, up to ``n_batch`` tokens in all, so a
   long prompt is read in chunks between the other streams' tokens instead of freezing them;

then calls ``llama_decode`` once and samples, per sequence, with that sequence's own sampler
chain (penalties, grammar, top-k/top-p/min-p, temperature, seed, logit bias). A request joins at
the next step and leaves at the step after its end (EOS, a stop string, ``max_tokens``, the
client gone); a cancelled sequence's KV cells are freed.

Batch order: each sequence has its own KV stream (``kv_unified`` off: a sequence attends to its
own cells only, whatever the others hold), and llama.cpp then splits a batch into one compute per
run of *consecutive, increasing* sequence ids. So a step lists its tokens in slot order, and a new
request takes, among equally good free slots, one next to a running sequence: sequences 2, 0, 3, 1
in that order (what least-recently-used slots gave once the prefix cache held one prompt in every
slot) cost two computes of the weights per step instead of one.

Prefix cache: a finished sequence leaves its KV cells in its slot, with the tokens they hold. A
new request goes to the free slot whose tokens share the longest prefix with its prompt and skips
those tokens (``cache_prompt``); a chat's next turn re-reads only what is new. When another slot,
busy or not, holds a prefix longer by ``SHARE_MIN_TOKENS`` or more (two users with one system
prompt, the second arriving while the first still generates), its cells are copied into the new
request's sequence (``llama_memory_seq_cp``: llama.cpp copies the stream's buffer before the next
step, far cheaper than computing the prompt) instead of being computed again. A request whose
prefix another sequence is still computing (a burst of clients with one system prompt) waits that
one step and copies the cells, so the prompt is computed once, not once per client.

Bursts: the binding announces a request while its prompt is tokenized; an idle engine's first step
waits for announced requests (at most ``GATHER_SECONDS``) so clients arriving together share one
prefill instead of each waiting a whole step behind the first (a running batch never waits).

Counters (:meth:`BatchEngine.describe`, ``/metrics`` ``lollms_engine_*``): steps, the sequences
and tokens they decoded, the computes llama.cpp split them into, and the seconds spent in
``llama_decode``, in sampling and text handling, and in handing events over.

The llama.cpp objects are used only from the decode thread, except in :meth:`exclusive`, which
waits until no sequence runs and hands the whole context to the caller (llama-cpp-python's own
high-level calls: forced chat formats, vision, native tool calls).
"""

from __future__ import annotations

import asyncio
import codecs
import ctypes
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import llama_cpp

from lollms_server.core.bindings import GenerationCancelled, StopTextBuffer

logger = logging.getLogger("lollms_bindings.llamacpp_binding.batching")

RANDOM_SEED = llama_cpp.LLAMA_DEFAULT_SEED
SHARE_MIN_TOKENS = 32  # a prefix copied from another slot saves at least this many tokens
COUNTERS = (
    "steps",  # llama_decode calls of the engine
    "batch_sequences",  # sequences decoded, summed over the steps
    "batch_tokens",  # tokens decoded, summed over the steps
    "batch_pieces",  # computes llama.cpp split the steps into (one per run of consecutive ids)
    "decode_seconds",  # in llama_decode
    "sample_seconds",  # sampling, end checks, text (after llama_decode, in the decode thread)
    "deliver_seconds",  # handing the step's events to the consumers' loops
    "prompt_tokens",
    "cached_tokens",  # prompt tokens not computed: read from a slot's cache or copied
    "shared_tokens",  # of which copied from another slot's cells
)
EXCLUSIVE_POLL_SECONDS = 0.05
"""How often a caller waiting for :meth:`BatchEngine.exclusive` looks at its cancel token."""
GATHER_SECONDS = 0.01
"""How long an idle engine's first step waits for requests already on their way (announced:
tokenizing) so they share its prefill instead of each waiting a whole step behind it."""


class GrammarError(ValueError):
    """A grammar llama.cpp cannot parse."""


@dataclass
class Sampling:
    """One sequence's sampling settings (llama-cpp-python's defaults)."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_last_n: int = 64
    seed: int = RANDOM_SEED
    logit_bias: dict[int, float] = field(default_factory=dict)
    grammar: str | None = None  # GBNF, root rule "root"


@dataclass
class SequenceRequest:
    """What one generation asks of the engine."""

    tokens: list[int]
    max_tokens: int
    sampling: Sampling = field(default_factory=Sampling)
    stops: list[str] = field(default_factory=list)
    cache_prompt: bool = True
    ignore_eos: bool = False  # forbid the end-of-sequence tokens
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class Finished:
    """The last event of a sequence."""

    reason: str  # "stop" | "length" | "cancelled"
    usage: dict[str, int]
    timings: dict[str, float]  # wall-clock (time.time()) instants of the server side


class EventSink:
    """Where one sequence's events go: its text pieces, then a :class:`Finished` or the exception
    that failed it. The engine hands over each step's events at once, after the step's sampling."""

    def deliver(self, events: list[Any]) -> None:
        raise NotImplementedError


class LoopSink(EventSink):
    """Events for a coroutine on an asyncio loop: one ``call_soon_threadsafe`` per loop and step,
    whatever the number of sequences (no thread per request, no GIL ping-pong with the decode
    thread)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.ended = asyncio.Event()  # set on the loop once the engine is done with the sequence

    def deliver(self, events: list[Any]) -> None:  # on the loop
        for event in events:
            self.queue.put_nowait(event)
            if isinstance(event, (Finished, BaseException)):
                self.ended.set()


def deliver_on_loop(batch: list[tuple[LoopSink, list[Any]]]) -> None:
    for sink, events in batch:
        sink.deliver(events)


class SamplerChain:
    """A ``llama_sampler`` chain owned by one sequence, freed with it."""

    def __init__(self, vocab: Any, n_vocab: int, sampling: Sampling, banned: list[int]) -> None:
        self.chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        bias = {**sampling.logit_bias, **dict.fromkeys(banned, float("-inf"))}
        try:
            if bias:
                items = (llama_cpp.llama_logit_bias * len(bias))()
                for index, (token, value) in enumerate(bias.items()):
                    items[index].token, items[index].bias = token, value
                self._add(llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(bias), items))
            if sampling.repeat_penalty != 1.0 or sampling.presence_penalty or sampling.frequency_penalty:
                self._add(
                    llama_cpp.llama_sampler_init_penalties(
                        n_vocab,
                        sampling.penalty_last_n,
                        sampling.repeat_penalty,
                        sampling.frequency_penalty,
                        sampling.presence_penalty,
                    )
                )
            if sampling.grammar:
                grammar = llama_cpp.llama_sampler_init_grammar(
                    vocab, sampling.grammar.encode("utf-8"), b"root"
                )
                if not grammar:
                    raise GrammarError("llama.cpp could not parse the grammar.")
                self._add(grammar)
            if sampling.temperature <= 0:
                self._add(llama_cpp.llama_sampler_init_greedy())
            else:
                self._add(llama_cpp.llama_sampler_init_top_k(sampling.top_k))
                self._add(llama_cpp.llama_sampler_init_top_p(sampling.top_p, 1))
                self._add(llama_cpp.llama_sampler_init_min_p(sampling.min_p, 1))
                self._add(llama_cpp.llama_sampler_init_temp(sampling.temperature))
                self._add(llama_cpp.llama_sampler_init_dist(sampling.seed))
        except BaseException:
            self.close()
            raise

    def _add(self, sampler: Any) -> None:
        llama_cpp.llama_sampler_chain_add(self.chain, sampler)  # the chain owns it now

    def sample(self, ctx: Any, index: int) -> int:
        return int(llama_cpp.llama_sampler_sample(self.chain, ctx, index))  # also accepts it

    def close(self) -> None:
        if self.chain is not None:
            llama_cpp.llama_sampler_free(self.chain)
            self.chain = None


def check_grammar(vocab: Any, grammar: str) -> None:
    """Raise :class:`GrammarError` when llama.cpp cannot parse ``grammar`` (any thread)."""
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode("utf-8"), b"root")
    if not sampler:
        raise GrammarError("llama.cpp could not parse the grammar.")
    llama_cpp.llama_sampler_free(sampler)


class Sequence:
    """The engine's state for one request."""

    def __init__(self, request: SequenceRequest, sink: EventSink) -> None:
        self.request = request
        self.sink = sink
        self.outbox: list[Any] = []  # this step's events, handed over by ``BatchEngine._flush``
        self.slot: Slot | None = None
        self.sampler: SamplerChain | None = None
        self.pending: deque[int] = deque()  # prompt tokens still to decode
        self.next_token: int | None = None  # sampled, not yet decoded
        self.produced = 0
        self.cached_tokens = 0
        self.text = StopTextBuffer(request.stops)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.timings: dict[str, float] = {"submitted": time.time()}


@dataclass
class Slot:
    """One llama.cpp sequence id and the tokens whose KV cells it holds."""

    seq_id: int
    tokens: list[int] = field(default_factory=list)
    sequence: Sequence | None = None
    last_used: float = 0.0


def common_prefix(left: list[int], right: list[int], block: int = 256) -> int:
    """How many tokens ``left`` and ``right`` share from the start (blocks compared in C, then
    the differing block token by token: admission runs it on every slot for every request)."""
    size = min(len(left), len(right))
    start = 0
    while start < size and left[start : start + block] == right[start : start + block]:
        start += block
    for index in range(start, min(start + block, size)):
        if left[index] != right[index]:
            return index
    return size


class BatchEngine:
    """Runs every sequence of one model together; see the module docstring."""

    def __init__(self, llama: Any, parallel: int, n_batch: int) -> None:
        self.llama = llama
        self.ctx = llama._ctx.ctx
        self.vocab = llama._model.vocab
        self.n_vocab = int(llama.n_vocab())
        self.parallel = parallel
        # what the context takes per decode (llama-cpp-python caps it at n_ctx): room for one
        # token of every sequence, as the binding sets it
        self.n_batch = min(max(n_batch, parallel), int(llama_cpp.llama_n_batch(self.ctx)))
        self.n_ctx_seq = int(llama_cpp.llama_n_ctx_seq(self.ctx))
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self.slots = [Slot(seq_id) for seq_id in range(parallel)]
        self.waiting: deque[Sequence] = deque()
        self.active: list[Sequence] = []
        self.condition = threading.Condition()
        self.exclusive_waiters = 0
        self.exclusive_held = False
        self.closed = False
        self._busy_thread = False  # true while a step runs outside the condition
        self.stats: dict[str, float] = dict.fromkeys(COUNTERS, 0)
        self.stats["max_batch_sequences"] = 0
        # what ignore_eos forbids, as llama.cpp's server: every end-of-generation token, not only
        # EOS and EOT (Gemma 3 has a third); scanned here, in the loading thread (85 ms for 262k
        # tokens), not at a first request on the decode thread, where every sequence would wait
        self.banned_at_eos = end_of_generation_tokens(self.vocab, self.n_vocab)
        self._piece = ctypes.create_string_buffer(256)
        self._pieces: dict[int, bytes] = {}  # token -> its bytes (a vocabulary never changes)
        self._eog: dict[int, bool] = {}
        self._finished: list[Sequence] = []  # ended since the last flush
        self._announced = 0  # requests on their way (see announce)
        self.thread = threading.Thread(target=self._run, name="llamacpp-batch", daemon=True)
        self.thread.start()

    # ---- the caller's side (any thread) -------------------------------------------
    def announce(self) -> None:
        """A request is on its way (its prompt being tokenized): an idle engine's first step
        waits for it up to ``GATHER_SECONDS``. Ends with :meth:`submit` (``announced=True``) or
        :meth:`withdraw`."""
        with self.condition:
            self._announced += 1

    def withdraw(self) -> None:
        """An announced request that will not come (it failed or was cancelled on its way)."""
        with self.condition:
            self._announced = max(0, self._announced - 1)
            self.condition.notify_all()

    def submit(self, request: SequenceRequest, sink: EventSink, announced: bool = False) -> None:
        """Queue ``request``; its events go to ``sink`` (any thread may call this)."""
        sequence = Sequence(request, sink)
        with self.condition:
            if announced:
                self._announced = max(0, self._announced - 1)
            if self.closed:
                raise RuntimeError("The model was unloaded.")
            self.waiting.append(sequence)
            self.condition.notify_all()

    @contextmanager
    def exclusive(self, cancel: threading.Event | None = None) -> Iterator[None]:
        """Wait until no sequence runs, then hold the whole context (new requests wait); the KV
        cache is cleared before and after, so the engine and the caller never see each other's.
        A caller whose ``cancel`` is set while it waits leaves at once (GenerationCancelled), and
        the requests held back for it are admitted."""
        with self.condition:
            self.exclusive_waiters += 1
            try:
                while not self.closed and (self.exclusive_held or self.active or self._busy_thread):
                    if cancel is not None and cancel.is_set():
                        raise GenerationCancelled()
                    self.condition.wait(EXCLUSIVE_POLL_SECONDS if cancel is not None else None)
                if self.closed:
                    raise RuntimeError("The model was unloaded.")
                if cancel is not None and cancel.is_set():
                    raise GenerationCancelled()
                self.exclusive_held = True
            finally:
                self.exclusive_waiters -= 1
                self.condition.notify_all()  # the decode thread admits what waited behind this
        try:
            self._clear_cache()
            self.llama.reset()
            yield
        finally:
            self._clear_cache()
            self.llama.reset()
            with self.condition:
                self.exclusive_held = False
                self.condition.notify_all()

    def wake(self) -> None:
        """Have the decode thread look again (a waiting request was cancelled)."""
        with self.condition:
            self.condition.notify_all()

    def close(self) -> None:
        """Stop the thread (running sequences end with an error) and free the batch; a caller
        holding the context through :meth:`exclusive` finishes first."""
        with self.condition:
            while self.exclusive_held:
                self.condition.wait()
            self.closed = True
            self.condition.notify_all()
        self.thread.join()
        llama_cpp.llama_batch_free(self.batch)

    def describe(self) -> dict[str, Any]:
        with self.condition:
            return {
                "parallel": self.parallel,
                "context_per_sequence": self.n_ctx_seq,
                "active": len(self.active),
                "waiting": len(self.waiting),
                **self.stats,
            }

    def counters(self) -> dict[str, float]:
        """The cumulative counters (see ``COUNTERS``), read without waiting for a step."""
        stats = dict(self.stats)
        return {key: stats[key] for key in COUNTERS}

    # ---- the decode thread ------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self.condition:
                while not self.closed:
                    self._gather()
                    if self._admit():
                        break
                    self.condition.wait()
                if self.closed:
                    break
                self._busy_thread = True
            try:
                self._step()
            except Exception as exc:  # noqa: BLE001 - every running sequence hears it
                logger.exception("A llama.cpp batch step failed")
                for sequence in list(self.active):
                    self._end(sequence, error=exc)
                self._clear_cache()
            finally:
                self._flush()
                with self.condition:
                    self._busy_thread = False
                    self.condition.notify_all()
        error = RuntimeError("The model was unloaded.")
        with self.condition:
            for sequence in [*self.active, *self.waiting]:
                self._end(sequence, error=error)
            self.waiting.clear()
            self._flush()

    def _gather(self) -> None:
        """(Under the condition.) Before an idle engine's first step, the requests already on
        their way join it: a burst of clients is prefilled in one step, not the first one alone
        while the others wait a whole step (measured on Gemma 3 270M, four clients at once: two
        were admitted 134 ms after the other two). Bounded by ``GATHER_SECONDS``; a running batch
        never waits (latecomers join its next step)."""
        if self.active or not self.waiting or not self._announced or self.exclusive_held:
            return
        if not any(slot.sequence is None for slot in self.slots):
            return
        self.condition.wait_for(lambda: not self._announced or self.closed, timeout=GATHER_SECONDS)

    def _admit(self) -> bool:
        """Move waiting requests into free slots (under the condition); True when there is work."""
        for sequence in [item for item in self.waiting if item.request.cancelled.is_set()]:
            self.waiting.remove(sequence)  # a client that left while waiting, even for exclusive()
            self._end(sequence, reason="cancelled")
        if not self.exclusive_held and not self.exclusive_waiters:
            deferred: list[Sequence] = []
            while self.waiting:
                free = [slot for slot in self.slots if slot.sequence is None]
                if not free:
                    break
                sequence = self.waiting.popleft()
                if sequence.request.cancelled.is_set():
                    self._end(sequence, reason="cancelled")
                    continue
                if self._prefix_coming(sequence):
                    deferred.append(sequence)
                    continue
                try:
                    self._place(sequence, free)
                except Exception as exc:  # noqa: BLE001 - a bad grammar fails only its request
                    self._end(sequence, error=exc)
            self.waiting.extendleft(reversed(deferred))  # first in their turn at the next step
        self._flush()
        return bool(self.active) and not self.exclusive_held

    def _prefix_coming(self, sequence: Sequence) -> bool:
        """Whether a sequence now computing its prompt will hold at least ``SHARE_MIN_TOKENS``
        more of this one's prefix than any slot holds now: then this one waits for those cells
        and copies them (a burst of requests with one long system prompt computes it once, not
        once per request in the same step)."""
        request = sequence.request
        if not request.cache_prompt:
            return False
        tokens = request.tokens
        limit = len(tokens) - 1
        held = max((min(common_prefix(slot.tokens, tokens), limit) for slot in self.slots), default=0)
        wanted = held + SHARE_MIN_TOKENS
        return any(
            other.pending and min(common_prefix(other.request.tokens, tokens), limit) >= wanted
            for other in self.active
        )

    def _place(self, sequence: Sequence, free: list[Slot]) -> None:
        request = sequence.request
        tokens = request.tokens
        limit = len(tokens) - 1  # one token to read: its logits give the first token
        if request.cache_prompt:
            running = {slot.seq_id for slot in self.slots if slot.sequence is not None}

            def rank(slot: Slot) -> tuple[int, bool, float]:
                # the longest prefix; among equals a slot next to a running one (one compute per
                # run of consecutive ids), then the least recently used
                beside = bool(running & {slot.seq_id - 1, slot.seq_id + 1})
                return min(common_prefix(slot.tokens, tokens), limit), beside, -slot.last_used

            slot = max(free, key=rank)
            reuse = rank(slot)[0]
            donor, shared = self._donor(tokens, limit, exclude=slot)
            if donor is not None and shared >= reuse + SHARE_MIN_TOKENS:
                slot = max(free, key=lambda item: rank(item)[1:])  # its own cache is worth less
                reuse = self._copy(donor, slot, shared)
        else:
            slot = min(free, key=lambda slot: slot.last_used)
            reuse = 0
        if not llama_cpp.llama_memory_seq_rm(self.memory, slot.seq_id, reuse, -1):
            llama_cpp.llama_memory_seq_rm(self.memory, slot.seq_id, -1, -1)
            reuse = 0
        del slot.tokens[reuse:]
        banned = self.banned_at_eos if request.ignore_eos else []
        sequence.sampler = SamplerChain(self.vocab, self.n_vocab, request.sampling, banned)
        sequence.slot, slot.sequence = slot, sequence
        sequence.cached_tokens = reuse
        sequence.pending.extend(tokens[reuse:])
        sequence.timings["admitted"] = time.time()
        self.stats["prompt_tokens"] += len(tokens)
        self.stats["cached_tokens"] += reuse
        self.active.append(sequence)

    def _donor(self, tokens: list[int], limit: int, exclude: Slot) -> tuple[Slot | None, int]:
        """The other slot (busy or not) whose cells hold the longest prefix of ``tokens``."""
        best, length = None, 0
        for slot in self.slots:
            if slot is not exclude:
                shared = min(common_prefix(slot.tokens, tokens), limit)
                if shared > length:
                    best, length = slot, shared
        return best, length

    def _copy(self, donor: Slot, slot: Slot, shared: int) -> int:
        """Give ``slot`` the first ``shared`` cells of ``donor``; the tokens it then holds.
        (Across KV streams llama.cpp copies the whole stream's buffer, at the next decode before
        that step's tokens; the cells past ``shared`` are dropped at once.)"""
        memory = self.memory
        llama_cpp.llama_memory_seq_rm(memory, slot.seq_id, -1, -1)
        slot.tokens.clear()
        llama_cpp.llama_memory_seq_cp(memory, donor.seq_id, slot.seq_id, -1, -1)
        trimmed = llama_cpp.llama_memory_seq_rm(memory, slot.seq_id, shared, -1)
        first = llama_cpp.llama_memory_seq_pos_min(memory, slot.seq_id)
        last = llama_cpp.llama_memory_seq_pos_max(memory, slot.seq_id)
        if not trimmed or first != 0 or last != shared - 1:  # e.g. a sliding window dropped cells
            llama_cpp.llama_memory_seq_rm(memory, slot.seq_id, -1, -1)
            return 0
        slot.tokens.extend(donor.tokens[:shared])
        self.stats["shared_tokens"] += shared
        return shared

    def _step(self) -> None:
        for sequence in list(self.active):
            if sequence.request.cancelled.is_set():
                self._end(sequence, reason="cancelled")
        if not self.active:
            return
        # what each sequence gives: its next token, or a chunk of its prompt (in arrival order, up
        # to n_batch tokens in all); listed in slot order (see the module docstring)
        room = self.n_batch - sum(1 for sequence in self.active if sequence.next_token is not None)
        takes: list[tuple[int, Sequence, int]] = []
        for sequence in self.active:
            assert sequence.slot is not None
            if sequence.next_token is not None:
                takes.append((sequence.slot.seq_id, sequence, 0))
            elif sequence.pending and room > 0:
                take = min(room, len(sequence.pending))
                room -= take
                takes.append((sequence.slot.seq_id, sequence, take))
        takes.sort(key=lambda item: item[0])
        batch = self.batch
        batch.n_tokens = 0
        outputs: list[tuple[Sequence, int]] = []
        pieces, last_id = 0, -2
        for seq_id, sequence, take in takes:
            pieces += seq_id != last_id + 1
            last_id = seq_id
            if take == 0:  # a generating sequence: its sampled token
                assert sequence.next_token is not None
                outputs.append((sequence, self._add(sequence, sequence.next_token, True)))
                sequence.next_token = None
                continue
            pending = sequence.pending
            ends = take == len(pending)
            for index in range(take):
                position = self._add(sequence, pending.popleft(), ends and index == take - 1)
            if ends:
                outputs.append((sequence, position))
        stats = self.stats
        stats["steps"] += 1
        stats["batch_sequences"] += len(takes)
        stats["batch_tokens"] += batch.n_tokens
        stats["batch_pieces"] += pieces
        stats["max_batch_sequences"] = max(stats["max_batch_sequences"], len(self.active))
        started = time.perf_counter()
        status = llama_cpp.llama_decode(self.ctx, batch)
        decoded = time.perf_counter()
        stats["decode_seconds"] += decoded - started
        if status != 0:
            raise RuntimeError(f"llama_decode failed ({status}).")
        now = time.time()
        for sequence, index in outputs:
            self._sampled(sequence, index, now)
        stats["sample_seconds"] += time.perf_counter() - decoded

    def _add(self, sequence: Sequence, token: int, logits: bool) -> int:
        slot = sequence.slot
        assert slot is not None
        batch = self.batch
        index = batch.n_tokens
        batch.token[index] = token
        batch.pos[index] = len(slot.tokens)
        batch.n_seq_id[index] = 1
        batch.seq_id[index][0] = slot.seq_id
        batch.logits[index] = logits
        batch.n_tokens = index + 1
        slot.tokens.append(token)
        return index

    def _sampled(self, sequence: Sequence, index: int, now: float) -> None:
        assert sequence.sampler is not None and sequence.slot is not None
        token = sequence.sampler.sample(self.ctx, index)
        sequence.timings.setdefault("first_token", now)
        end = self._eog.get(token)
        if end is None:
            end = self._eog[token] = bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))
        if end:
            self._end(sequence, reason="stop", flush=True)  # text held back for a stop is kept
            return
        sequence.produced += 1
        piece, stopped = sequence.text.push(sequence.decoder.decode(self._token_bytes(token)))
        if piece:
            sequence.outbox.append(piece)
        if stopped:
            self._end(sequence, reason="stop")
        elif sequence.produced >= sequence.request.max_tokens or len(sequence.slot.tokens) >= self.n_ctx_seq:
            self._end(sequence, reason="length")
        else:
            sequence.next_token = token

    def _token_bytes(self, token: int) -> bytes:
        known = self._pieces.get(token)
        if known is not None:
            return known
        size = llama_cpp.llama_token_to_piece(self.vocab, token, self._piece, len(self._piece), 0, False)
        if size < 0:  # a piece longer than the buffer
            self._piece = ctypes.create_string_buffer(-size)
            size = llama_cpp.llama_token_to_piece(self.vocab, token, self._piece, len(self._piece), 0, False)
        piece = self._pieces[token] = self._piece.raw[:size]
        return piece

    def _end(
        self,
        sequence: Sequence,
        *,
        reason: str = "stop",
        error: BaseException | None = None,
        flush: bool = False,
    ) -> None:
        """End ``sequence``: free its slot (its KV too when cancelled or failed) and queue its
        last events; ``flush`` (and a ``length`` end) emits text held back for a stop string."""
        slot = sequence.slot
        if sequence in self.active:
            self.active.remove(sequence)
        if sequence.sampler is not None:
            sequence.sampler.close()
            sequence.sampler = None
        if slot is not None:
            slot.sequence = None
            slot.last_used = time.monotonic()
            if error is not None or reason == "cancelled":  # free its KV cells
                llama_cpp.llama_memory_seq_rm(self.memory, slot.seq_id, -1, -1)
                slot.tokens.clear()
        if error is not None:
            sequence.outbox.append(error)
            self._finished.append(sequence)
            return
        if reason == "length" or flush:
            tail, _ = sequence.text.push(sequence.decoder.decode(b"", final=True))
            tail += sequence.text.flush()
            if tail:
                sequence.outbox.append(tail)
        sequence.timings["finished"] = time.time()
        usage = {
            "prompt_tokens": len(sequence.request.tokens),
            "completion_tokens": sequence.produced,
            "cached_tokens": sequence.cached_tokens,
        }
        sequence.outbox.append(Finished(reason, usage, sequence.timings))
        self._finished.append(sequence)

    def _flush(self) -> None:
        """Hand over the events of this step: one call per event loop, after all the sampling
        (the consumers then run while the next ``llama_decode`` has released the GIL)."""
        started = time.perf_counter()
        by_loop: dict[Any, list[tuple[LoopSink, list[Any]]]] = {}
        for sequence in [*self.active, *self._finished]:
            if not sequence.outbox:
                continue
            events, sequence.outbox = sequence.outbox, []
            sink = sequence.sink
            if isinstance(sink, LoopSink):
                by_loop.setdefault(sink.loop, []).append((sink, events))
            else:
                sink.deliver(events)
        self._finished.clear()
        for loop, batch in by_loop.items():
            try:
                loop.call_soon_threadsafe(deliver_on_loop, batch)
            except RuntimeError:  # that loop is closed: nobody listens any more
                pass
        self.stats["deliver_seconds"] += time.perf_counter() - started

    def _clear_cache(self) -> None:
        llama_cpp.llama_memory_clear(self.memory, True)
        for slot in self.slots:
            slot.tokens.clear()


def end_of_generation_tokens(vocab: Any, n_vocab: int) -> list[int]:
    """The tokens llama.cpp ends a generation at (``llama_vocab_is_eog``)."""
    return [token for token in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, token)]
