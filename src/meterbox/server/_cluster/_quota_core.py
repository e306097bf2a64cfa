"""Quota blocks for a cluster: pure accounting, values in and values out (docs/adr/0025).

A metered (license, meter, period) shared by cluster nodes is one *pool*, stored in etcd
as one value: the license's limit, the top-ups applied to it, the units *consumed*
(settled from blocks) and the *blocks* that nodes hold. A node grants usage only from
blocks it holds, so most usage events need no etcd round trip; it takes a block with a
compare-and-swap of the pool and gives back what it did not use.

Invariants (checked by the property test over every interleaving of take, use, return,
expiry and reconciliation, ``tests/unit/test_quota_core.py``):

* ``consumed + sum(block sizes) <= limit + topups`` in every pool value ever written:
  :meth:`Pool.take` refuses a block larger than what is free, so on ``refuse`` meters the
  units granted in total (which never exceed the blocks' sizes) never exceed the limit;
* a block is settled at most once, and its ``used`` never exceeds its size;
* a node's holdings are a fold of its own ledger (:meth:`NodeBook.apply`), the same code
  the live path runs, so after a crash the node knows what it had granted from every
  block: that counts as consumed and the rest goes back (:func:`settlement`);
* a block whose node died stays counted until its node settles it from its ledger: the
  units it granted are only in that ledger, so freeing the block earlier could grant
  more than the limit. The other nodes go on with the rest of the pool;
* a block nothing drew on for a while is given back as ``unused`` (:func:`idle_blocks`),
  through the same settlement as a graceful stop, so an idle node does not keep units
  another node is refused for.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Final, Literal

from meterbox.errors import FormatError, QuotaExceeded
from meterbox.ledger.records import (
    QuotaBlockReturned,
    QuotaBlockTaken,
    RecordPayload,
    Usage,
    UsageDecrement,
)

#: Version of the pool value stored in etcd; another version is refused.
POOL_VERSION: Final = 1

#: (license id, meter, period key)
PoolKey = tuple[str, str, str]

SettleReason = Literal["unused", "expired", "lost"]


@dataclass(frozen=True, slots=True)
class Block:
    """A block of a pool reserved by one node."""

    block_id: str
    node: str
    size: int


@dataclass(frozen=True, slots=True)
class Pool:
    """The shared quota of one (license, meter, period), as stored in etcd."""

    limit: int
    topups: int = 0
    consumed: int = 0
    blocks: tuple[Block, ...] = ()

    def __post_init__(self) -> None:
        for name in ("limit", "topups", "consumed"):
            if getattr(self, name) < 0:
                raise FormatError(
                    f"quota pool has a negative {name!r}",
                    expected="a count of units, 0 or more",
                    found=str(getattr(self, name)),
                )
        ids = [b.block_id for b in self.blocks]
        if len(set(ids)) != len(ids):
            raise FormatError(
                "quota pool lists a block twice", expected="unique block ids", found=str(ids)
            )
        if any(b.size <= 0 for b in self.blocks):
            raise FormatError(
                "quota pool holds an empty block",
                expected="block sizes of 1 or more",
                found=str([b.size for b in self.blocks]),
            )

    @property
    def reserved(self) -> int:
        return sum(b.size for b in self.blocks)

    @property
    def free(self) -> int:
        """Units no node holds and nobody consumed (0 when top-ups were over-consumed)."""
        return max(0, self.limit + self.topups - self.consumed - self.reserved)

    def block(self, block_id: str) -> Block | None:
        return next((b for b in self.blocks if b.block_id == block_id), None)

    def held_by(self, node: str) -> tuple[Block, ...]:
        return tuple(b for b in self.blocks if b.node == node)

    def take(self, block_id: str, node: str, size: int) -> Pool:
        """The pool with ``size`` more units reserved for ``node``; QuotaExceeded if not free."""
        if size <= 0 or size > self.free:
            raise QuotaExceeded(
                "The shared quota has no block of that size left",
                expected=f"a block of 1 to {self.free} units",
                found=f"{size} requested; limit {self.limit} + top-ups {self.topups}, "
                f"consumed {self.consumed}, held in blocks {self.reserved}",
                hint="Ask the vendor for a top-up file and import it on any cluster node",
            )
        if self.block(block_id) is not None:
            raise FormatError(
                "quota block id already in use", expected="a fresh block id", found=block_id
            )
        return replace(self, blocks=(*self.blocks, Block(block_id, node, size)))

    def settle(self, block_id: str, used: int) -> Pool:
        """The pool with the block gone: ``used`` units consumed, the rest free again."""
        held = self.block(block_id)
        if held is None:
            raise FormatError(
                "quota block is not in the pool",
                expected="a block the pool still lists",
                found=block_id,
            )
        used = max(0, min(used, held.size))
        return replace(
            self,
            consumed=self.consumed + used,
            blocks=tuple(b for b in self.blocks if b.block_id != block_id),
        )

    def topup(self, amount: int) -> Pool:
        if amount <= 0:
            raise FormatError("top-up amount", expected="1 or more units", found=str(amount))
        return replace(self, topups=self.topups + amount)

    # ------------------------------------------------------------ bytes
    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "v": POOL_VERSION,
                "limit": self.limit,
                "topups": self.topups,
                "consumed": self.consumed,
                "blocks": [[b.block_id, b.node, b.size] for b in self.blocks],
            },
            separators=(",", ":"),
            sort_keys=True,
        ).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Pool:
        """Parse a pool value; FormatError naming what was expected and found."""
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise FormatError(
                "quota pool value is not JSON", expected="a JSON object", found=str(exc)
            ) from None
        if not isinstance(data, dict):
            raise FormatError(
                "quota pool value is not an object",
                expected="a JSON object",
                found=type(data).__name__,
            )
        if data.get("v") != POOL_VERSION:
            raise FormatError(
                "quota pool value has an unknown version",
                expected=f"v = {POOL_VERSION}",
                found=repr(data.get("v")),
                hint="Run the same meterbox version on every cluster node",
            )
        ints = {k: data.get(k) for k in ("limit", "topups", "consumed")}
        for k, v in ints.items():
            if not isinstance(v, int) or isinstance(v, bool):
                raise FormatError(
                    f"quota pool value has an ill-typed {k!r}",
                    expected="an integer",
                    found=repr(v),
                )
        blocks = data.get("blocks")
        if not isinstance(blocks, list):
            raise FormatError(
                "quota pool value has no block list",
                expected="'blocks' as a list",
                found=repr(blocks),
            )
        parsed = []
        for row in blocks:
            if not (
                isinstance(row, list)
                and len(row) == 3  # block id, node id, size
                and isinstance(row[0], str)
                and isinstance(row[1], str)
                and isinstance(row[2], int)
                and not isinstance(row[2], bool)
            ):
                raise FormatError(
                    "quota pool value has an ill-formed block",
                    expected="[block id, node id, size]",
                    found=repr(row),
                )
            parsed.append(Block(row[0], row[1], row[2]))
        return cls(
            limit=ints["limit"],  # type: ignore[arg-type]
            topups=ints["topups"],  # type: ignore[arg-type]
            consumed=ints["consumed"],  # type: ignore[arg-type]
            blocks=tuple(parsed),
        )


def block_size(*, wanted: int, free: int, preferred: int, members: int) -> int:
    """How many units to reserve for a request that needs ``wanted`` more than the node holds.

    The preferred size (the measured trade-off of ADR 0025), but never more than a fair
    share of what is left, so the last units of a pool are spread over the members
    instead of stranded in one node's block; never less than ``wanted``; 0 when the pool
    cannot cover ``wanted``.
    """
    if wanted > free:
        return 0
    share = -(-free // (2 * max(1, members)))  # ceil(free / 2n)
    return min(free, max(wanted, min(preferred, share)))


@dataclass(slots=True)
class OpenBlock:
    """A block a node holds: its size and the units granted from it so far."""

    block_id: str
    pool: PoolKey
    size: int
    used: int = 0

    @property
    def left(self) -> int:
        return self.size - self.used


@dataclass(slots=True)
class NodeBook:
    """One node's blocks: open ones (oldest first, per pool) and the settled ones' use.

    Built live by the node and, after a restart, by folding its ledger with
    :meth:`apply`: both go through the same methods, so the two cannot disagree.
    """

    open: dict[str, OpenBlock] = field(default_factory=dict)
    #: Block id -> units used, for blocks this ledger has settled.
    settled: dict[str, int] = field(default_factory=dict)

    def blocks_of(self, pool: PoolKey) -> list[OpenBlock]:
        return [b for b in self.open.values() if b.pool == pool]

    def left(self, pool: PoolKey) -> int:
        return sum(b.left for b in self.blocks_of(pool))

    def other_periods(self, pool: PoolKey) -> list[OpenBlock]:
        """Open blocks of the same license and meter in another period (to settle first)."""
        return [b for b in self.open.values() if b.pool[:2] == pool[:2] and b.pool != pool]

    def opened(self, block_id: str, pool: PoolKey, size: int) -> None:
        if block_id in self.open or block_id in self.settled:
            raise FormatError(
                "quota block taken twice", expected="a fresh block id", found=block_id
            )
        self.open[block_id] = OpenBlock(block_id, pool, size)

    def draw(self, pool: PoolKey, amount: int) -> bool:
        """Take ``amount`` units from the pool's open blocks, oldest first; False if short."""
        blocks = self.blocks_of(pool)
        if sum(b.left for b in blocks) < amount:
            return False
        for b in blocks:
            step = min(b.left, amount)
            b.used += step
            amount -= step
            if amount == 0:
                break
        return True

    def credit(self, pool: PoolKey, amount: int) -> int:
        """Give units back to the newest open blocks that have any; return how many.

        Units beyond what the open blocks granted are not given back to the pool:
        enforcement stays conservative, billing (from the ledgers) is exact anyway.
        """
        given = 0
        for b in reversed(self.blocks_of(pool)):
            step = min(b.used, amount - given)
            b.used -= step
            given += step
            if given == amount:
                break
        return given

    def closed(self, block_id: str, used: int) -> None:
        self.open.pop(block_id, None)
        self.settled[block_id] = used

    def used_of(self, block_id: str) -> int:
        """What this node granted from a block: open, settled, or never recorded (0)."""
        if block_id in self.open:
            return self.open[block_id].used
        return self.settled.get(block_id, 0)

    def apply(self, record: RecordPayload) -> None:
        """Fold one of this node's own ledger records (others are ignored)."""
        if isinstance(record, QuotaBlockTaken):
            pool = (record.license_id, record.meter, record.period)
            if record.block_id not in self.open and record.block_id not in self.settled:
                self.opened(record.block_id, pool, record.size)
        elif isinstance(record, QuotaBlockReturned):
            self.closed(record.block_id, record.used)
        elif isinstance(record, UsageDecrement):
            # A subclass of Usage: test it first.
            for pool in self._pools(record):
                self.credit(pool, record.amount)
        elif isinstance(record, Usage) and not record.flagged and type(record) is Usage:
            for pool in self._pools(record):
                self.draw(pool, min(record.amount, self.left(pool)))

    def _pools(self, record: Usage) -> list[PoolKey]:
        # The live path keeps one period open per license and meter (it settles the
        # others before taking a block), so the record's pool is the open one.
        pools = {
            b.pool for b in self.open.values() if b.pool[:2] == (record.license_id, record.meter)
        }
        return sorted(pools)[:1]

    @classmethod
    def fold(cls, records: Iterable[RecordPayload]) -> NodeBook:
        book = cls()
        for r in records:
            book.apply(r)
        return book


@dataclass(frozen=True, slots=True)
class Settlement:
    """How a node settles one of its blocks that a pool still lists."""

    block: Block
    pool: PoolKey
    used: int
    #: The RETURNED record to write, or None when the ledger already holds one.
    record: QuotaBlockReturned | None


def settlement(pool_key: PoolKey, block: Block, book: NodeBook, reason: SettleReason) -> Settlement:
    """What the node's ledger says about a block it held: used units, and the record to add."""
    used = min(book.used_of(block.block_id), block.size)
    record = None
    if block.block_id not in book.settled:
        license_id, meter, period = pool_key
        record = QuotaBlockReturned(
            block_id=block.block_id,
            license_id=license_id,
            meter=meter,
            period=period,
            used=used,
            returned=block.size - used,
            reason=reason,
        )
    return Settlement(block, pool_key, used, record)


def idle_blocks(
    book: NodeBook,
    last_drawn: Mapping[str, float],
    now: float,
    *,
    idle_s: float,
    near_limit_idle_s: float,
    near_limit: Collection[PoolKey] = (),
) -> list[str]:
    """The open blocks to give back because nothing drew on them for a while (ADR 0032).

    A block is idle once ``idle_s`` seconds passed since its last draw (or since it was
    taken, if never drawn on); sooner, after ``near_limit_idle_s``, when its pool is in
    ``near_limit`` (the pool had less than a block free when last seen, so another node
    may be refused for want of the units this block holds). A block ``last_drawn`` does
    not know counts as idle: the shell stamps every block it opens. Oldest first, the
    book's order, so a settlement interrupted half-way leaves the newest blocks open.
    """
    out = []
    for b in book.open.values():
        wait = near_limit_idle_s if b.pool in near_limit else idle_s
        at = last_drawn.get(b.block_id)
        if at is None or now - at >= wait:
            out.append(b.block_id)
    return out
