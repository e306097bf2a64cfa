"""Quota block accounting (server/_cluster/_quota_core.py): the pool value and its parser,
block sizing, the idle give-back decision, and a state machine over every interleaving of
take, use, give back (at a stop or when idle), a node dying with its blocks (its lease
expires) and its reconciliation from its own ledger."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from meterbox.errors import FormatError, QuotaExceeded
from meterbox.ledger.records import (
    QuotaBlockReturned,
    QuotaBlockTaken,
    RecordPayload,
    Usage,
    UsageDecrement,
)
from meterbox.server._cluster._quota_core import (
    POOL_VERSION,
    Block,
    NodeBook,
    Pool,
    block_size,
    idle_blocks,
    settlement,
)

POOL = ("lic-1", "runs", "total")

blocks_st = st.lists(
    st.tuples(st.text(min_size=1, max_size=8), st.text(max_size=8), st.integers(1, 10**6)),
    max_size=5,
    unique_by=lambda t: t[0],
)
pools_st = st.builds(
    Pool,
    limit=st.integers(0, 10**12),
    topups=st.integers(0, 10**9),
    consumed=st.integers(0, 10**12),
    blocks=blocks_st.map(lambda rows: tuple(Block(*r) for r in rows)),
)


@given(pools_st)
def test_pool_values_round_trip(pool: Pool) -> None:
    assert Pool.from_bytes(pool.to_bytes()) == pool


@given(st.binary(max_size=64))
def test_random_bytes_parse_or_raise_format_error(raw: bytes) -> None:
    with contextlib.suppress(FormatError):
        Pool.from_bytes(raw)


@given(
    st.dictionaries(
        st.sampled_from(["v", "limit", "topups", "consumed", "blocks"]),
        st.one_of(
            st.integers(-3, 3),
            st.booleans(),
            st.text(max_size=3),
            st.lists(st.lists(st.one_of(st.integers(-1, 3), st.text(max_size=2)), max_size=4)),
        ),
    )
)
def test_ill_formed_pool_maps_raise_format_error(data: dict[str, object]) -> None:
    raw = json.dumps(data).encode()
    try:
        pool = Pool.from_bytes(raw)
    except FormatError as exc:
        error: FormatError | None = exc
    else:
        error = None
        assert pool.limit >= 0 and all(b.size > 0 for b in pool.blocks)
    if error is not None:
        assert error.expected and error.found is not None


def test_unknown_pool_version_is_refused_with_a_hint() -> None:
    raw = json.dumps({"v": POOL_VERSION + 1, "limit": 1, "topups": 0, "consumed": 0, "blocks": []})
    with pytest.raises(FormatError, match="unknown version") as info:
        Pool.from_bytes(raw.encode())
    assert info.value.hint is not None


def test_a_block_larger_than_what_is_free_is_refused() -> None:
    pool = Pool(limit=100, consumed=40).take("a", "n1", 50)
    assert pool.free == 10
    with pytest.raises(QuotaExceeded, match="no block of that size"):
        pool.take("b", "n2", 11)
    assert pool.take("b", "n2", 10).free == 0
    settled = pool.settle("a", 20)
    assert (settled.consumed, settled.free, settled.blocks) == (60, 40, ())
    with pytest.raises(FormatError, match="not in the pool"):
        settled.settle("a", 0)


@given(
    wanted=st.integers(1, 1000),
    free=st.integers(0, 10_000),
    preferred=st.integers(1, 500),
    members=st.integers(1, 9),
)
def test_block_size_covers_the_request_and_never_exceeds_what_is_free(
    wanted: int, free: int, preferred: int, members: int
) -> None:
    size = block_size(wanted=wanted, free=free, preferred=preferred, members=members)
    if wanted > free:
        assert size == 0
    else:
        assert wanted <= size <= free
        assert size <= max(wanted, preferred)


def test_the_last_units_are_shared_out_not_stranded() -> None:
    # 30 units left, 3 members: a block of at most ceil(30 / 6) = 5, not the preferred 64.
    assert block_size(wanted=1, free=30, preferred=64, members=3) == 5


def _book(*blocks: tuple[str, tuple[str, str, str]]) -> NodeBook:
    book = NodeBook()
    for block_id, pool in blocks:
        book.opened(block_id, pool, 10)
    return book


def test_a_block_not_drawn_on_for_idle_s_is_given_back() -> None:
    other = ("lic-1", "jobs", "total")
    book = _book(("a", POOL), ("b", POOL), ("c", other))
    drawn = {"a": 100.0, "b": 125.0, "c": 128.0}
    kw = {"idle_s": 30.0, "near_limit_idle_s": 5.0}
    assert idle_blocks(book, drawn, 129.0, **kw) == []
    assert idle_blocks(book, drawn, 130.0, **kw) == ["a"]
    # Near its limit, a pool's blocks go back after near_limit_idle_s; others wait.
    assert idle_blocks(book, drawn, 130.0, near_limit=[POOL], **kw) == ["a", "b"]
    assert idle_blocks(book, drawn, 133.0, near_limit=[other], **kw) == ["a", "c"]
    # A block the shell never stamped is idle; a settled one is not open any more.
    assert idle_blocks(book, {}, 0.0, **kw) == ["a", "b", "c"]
    book.closed("a", 4)
    assert idle_blocks(book, drawn, 1000.0, **kw) == ["b", "c"]


@given(
    ages=st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=6),
    near=st.sets(st.integers(0, 5)),
    idle_s=st.floats(1, 60),
    near_s=st.floats(0.1, 1),
)
def test_idle_blocks_are_exactly_those_past_their_wait(
    ages: list[float], near: set[int], idle_s: float, near_s: float
) -> None:
    pools = [("lic", "m", str(i)) for i in range(len(ages))]
    book = _book(*((f"b{i}", p) for i, p in enumerate(pools)))
    now = 1000.0
    drawn = {f"b{i}": now - age for i, age in enumerate(ages)}
    near_pools = {pools[i] for i in near if i < len(pools)}
    got = idle_blocks(
        book, drawn, now, idle_s=idle_s, near_limit_idle_s=near_s * idle_s, near_limit=near_pools
    )
    for i in range(len(ages)):
        wait = near_s * idle_s if pools[i] in near_pools else idle_s
        assert (f"b{i}" in got) == (now - drawn[f"b{i}"] >= wait)
    assert got == [b for b in book.open if b in got]  # oldest first


# --------------------------------------------------------------- the state machine
LIMIT = 60
NODES = ("n0", "n1", "n2")


@dataclass
class ModelNode:
    ledger: list[RecordPayload] = field(default_factory=list)
    book: NodeBook = field(default_factory=NodeBook)
    alive: bool = True
    #: A pool value and revision read earlier: a later take compares against it.
    snapshot: tuple[Pool, int] | None = None
    taken: int = 0
    #: Block id -> model time of its last draw (or take): the idle decision's input.
    last_drawn: dict[str, float] = field(default_factory=dict)


class QuotaInterleavings(RuleBasedStateMachine):
    """etcd as one compare-and-swap register; nodes that read stale values, die, come back."""

    @initialize(limit=st.integers(0, LIMIT), preferred=st.integers(1, 25))
    def start(self, limit: int, preferred: int) -> None:
        self.pool = Pool(limit=limit)
        self.rev = 1
        self.preferred = preferred
        self.nodes = {n: ModelNode() for n in NODES}
        #: Units granted minus units given back, over all nodes' ledgers.
        self.net = 0
        #: Model seconds (monotonic), advanced by :meth:`tick`.
        self.now = 0.0

    def _cas(self, expected_rev: int, new: Pool) -> bool:
        if expected_rev != self.rev:
            return False
        self.pool, self.rev = new, self.rev + 1
        return True

    @rule(node=st.sampled_from(NODES))
    def read(self, node: str) -> None:
        self.nodes[node].snapshot = (self.pool, self.rev)

    @rule(
        node=st.sampled_from(NODES),
        wanted=st.integers(1, 12),
        sized=st.booleans(),
        crash=st.booleans(),
    )
    def take(self, node: str, wanted: int, sized: bool, crash: bool) -> None:
        n = self.nodes[node]
        if not n.alive or n.snapshot is None:
            return
        seen, rev = n.snapshot
        # Sized as the shell sizes blocks, or asking for any size: the pool must refuse.
        size = (
            block_size(wanted=wanted, free=seen.free, preferred=self.preferred, members=3)
            if sized
            else wanted
        )
        if size == 0:
            return
        n.taken += 1
        block_id = f"{node}.{n.taken}.{len(n.ledger)}"
        try:
            taken = seen.take(block_id, node, size)
        except QuotaExceeded:
            assert size > seen.free
            return
        if not self._cas(rev, taken):
            return
        n.snapshot = None
        if crash:
            # Reserved in etcd, dead before the ledger heard of it.
            self._die(node)
            return
        n.book.opened(block_id, POOL, size)
        n.last_drawn[block_id] = self.now
        n.ledger.append(
            QuotaBlockTaken(
                block_id=block_id, license_id=POOL[0], meter=POOL[1], period=POOL[2], size=size
            )
        )

    @rule(node=st.sampled_from(NODES), amount=st.integers(1, 9))
    def use(self, node: str, amount: int) -> None:
        n = self.nodes[node]
        before = {b.block_id: b.used for b in n.book.blocks_of(POOL)}
        if n.alive and n.book.draw(POOL, amount):
            n.ledger.append(Usage(meter=POOL[1], amount=amount, license_id=POOL[0]))
            self.net += amount
            for b in n.book.blocks_of(POOL):
                if b.used != before[b.block_id]:
                    n.last_drawn[b.block_id] = self.now

    @rule(seconds=st.floats(0, 40, allow_nan=False))
    def tick(self, seconds: float) -> None:
        self.now += seconds

    @rule(node=st.sampled_from(NODES), amount=st.integers(1, 9))
    def over(self, node: str, amount: int) -> None:
        """A flagged grant (an ``allow`` meter past its blocks): never drawn from a block."""
        n = self.nodes[node]
        if n.alive:
            n.ledger.append(Usage(meter=POOL[1], amount=amount, license_id=POOL[0], flagged=True))

    @rule(node=st.sampled_from(NODES), amount=st.integers(1, 9))
    def give_units_back(self, node: str, amount: int) -> None:
        n = self.nodes[node]
        if n.alive:
            self.net -= n.book.credit(POOL, amount)
            n.ledger.append(UsageDecrement(meter=POOL[1], amount=amount, license_id=POOL[0]))

    @rule(node=st.sampled_from(NODES), crash_before_etcd=st.booleans())
    def give_back(self, node: str, crash_before_etcd: bool) -> None:
        n = self.nodes[node]
        if not n.alive or not n.book.open:
            return
        self._settle(node, next(iter(n.book.open)), crash_before_etcd)

    @rule(
        node=st.sampled_from(NODES),
        near_limit=st.booleans(),
        crash_before_etcd=st.booleans(),
    )
    def give_back_idle(self, node: str, near_limit: bool, crash_before_etcd: bool) -> None:
        """The housekeeping round: every block the idle decision picks is settled unused."""
        n = self.nodes[node]
        if not n.alive:
            return
        ids = idle_blocks(
            n.book,
            n.last_drawn,
            self.now,
            idle_s=30.0,
            near_limit_idle_s=5.0,
            near_limit=[POOL] if near_limit else [],
        )
        free = self.pool.free
        left = sum(n.book.open[b].left for b in ids)
        for block_id in ids:
            self._settle(node, block_id, crash_before_etcd)
            if not n.alive:
                return
        # What the idle blocks did not grant is free again, for any node.
        assert self.pool.free == free + left
        assert all(b not in n.book.open for b in ids)

    def _settle(self, node: str, block_id: str, crash_before_etcd: bool) -> None:
        n = self.nodes[node]
        block = self.pool.block(block_id)
        assert block is not None, "an open block is in the pool until it is settled"
        s = settlement(POOL, block, n.book, "unused")
        assert s.record is not None
        n.ledger.append(s.record)
        n.book.closed(block_id, s.used)
        if crash_before_etcd:
            self._die(node)
            return
        assert self._cas(self.rev, self.pool.settle(block_id, s.used))

    def _die(self, node: str) -> None:
        # kill -9: memory is gone, the ledger stays; etcd drops the lease's live keys but
        # the pool keeps the blocks counted.
        n = self.nodes[node]
        n.alive, n.book, n.snapshot = False, NodeBook(), None
        n.last_drawn = {}

    @rule(node=st.sampled_from(NODES))
    def die(self, node: str) -> None:
        self._die(node)

    @precondition(lambda self: any(not n.alive for n in self.nodes.values()))
    @rule(node=st.sampled_from(NODES))
    def come_back(self, node: str) -> None:
        n = self.nodes[node]
        if n.alive:
            return
        n.book = NodeBook.fold(n.ledger)
        for block in self.pool.held_by(node):
            s = settlement(POOL, block, n.book, "expired")
            if s.record is not None:
                n.ledger.append(s.record)
            n.book.closed(block.block_id, s.used)
            assert self._cas(self.rev, self.pool.settle(block.block_id, s.used))
        n.book.open.clear()
        n.alive = True

    @rule(amount=st.integers(1, 20))
    def topup(self, amount: int) -> None:
        assert self._cas(self.rev, self.pool.topup(amount))

    # ------------------------------------------------------------ invariants
    @invariant()
    def never_more_than_the_limit_is_granted(self) -> None:
        assert self.pool.consumed + self.pool.reserved <= self.pool.limit + self.pool.topups
        assert self.net <= self.pool.limit + self.pool.topups

    @invariant()
    def every_unit_is_accounted_for_exactly(self) -> None:
        folds = {name: NodeBook.fold(n.ledger) for name, n in self.nodes.items()}
        held = sum(folds[b.node].used_of(b.block_id) for b in self.pool.blocks)
        assert self.pool.consumed + held == self.net

    @invariant()
    def a_live_node_s_book_is_the_fold_of_its_ledger(self) -> None:
        for n in self.nodes.values():
            if n.alive:
                fold = NodeBook.fold(n.ledger)
                assert {k: (b.size, b.used) for k, b in fold.open.items()} == {
                    k: (b.size, b.used) for k, b in n.book.open.items()
                }

    @invariant()
    def returned_records_add_up_to_their_block(self) -> None:
        for n in self.nodes.values():
            sizes = {r.block_id: r.size for r in n.ledger if isinstance(r, QuotaBlockTaken)}
            for r in n.ledger:
                if isinstance(r, QuotaBlockReturned) and r.block_id in sizes:
                    assert r.used + r.returned == sizes[r.block_id]
                    assert 0 <= r.used <= sizes[r.block_id]


TestQuotaInterleavings = QuotaInterleavings.TestCase
TestQuotaInterleavings.settings = settings(max_examples=300, stateful_step_count=60)
