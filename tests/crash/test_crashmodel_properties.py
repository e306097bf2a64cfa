"""Properties of the crash model's file variants: it never invents a byte.

Every image the model builds for one file must be a state a power loss can leave:
each byte is the old byte, a zero (space the file system allocated before the data
arrived), or the byte one of the unsynced writes put at that place; the file is no
longer than the largest extent the operations reached. The first variant is the
synced file, and some variant is every operation persisted.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from support.crashmodel import SECTOR, Op, _apply_content, _content_variants

_writes = st.builds(
    lambda offset, data: Op("write", ino=1, offset=offset, data=data),
    st.integers(0, 3 * SECTOR),
    st.binary(min_size=1, max_size=2 * SECTOR).filter(lambda b: 0 not in b),
)
_truncates = st.builds(lambda size: Op("truncate", ino=1, size=size), st.integers(0, 4 * SECTOR))
_ops = st.lists(st.one_of(_writes, _writes, _truncates), min_size=1, max_size=5)
_base = st.binary(max_size=3 * SECTOR).map(lambda b: b.replace(b"\0", b"\1"))


@given(_base, _ops)
def test_every_variant_is_made_of_old_bytes_zeros_and_written_bytes(
    base: bytes, ops: list[Op]
) -> None:
    extent = max([len(base)] + [op.offset + len(op.data) if op.kind == "write" else op.size
                                for op in ops])  # fmt: skip
    for label, data in _content_variants(base, ops):
        assert len(data) <= extent, label
        for i, byte in enumerate(data):
            allowed = {0}
            if i < len(base):
                allowed.add(base[i])
            for op in ops:
                if op.kind == "write" and op.offset <= i < op.offset + len(op.data):
                    allowed.add(op.data[i - op.offset])
            assert byte in allowed, f"{label}: byte {i} is {byte}, expected one of {allowed}"


@given(_base, _ops)
def test_the_synced_file_and_the_fully_persisted_file_are_both_images(
    base: bytes, ops: list[Op]
) -> None:
    variants = dict(_content_variants(base, ops))
    assert variants["none"] == base
    assert _apply_content(base, ops) in variants.values()


@given(st.integers(0, 4 * SECTOR), st.integers(1, 6 * SECTOR))
def test_sector_cuts_fall_on_absolute_sector_boundaries(offset: int, size: int) -> None:
    op = Op("write", ino=1, offset=offset, data=bytes(range(1, 256)) * (size // 255 + 1))
    op = Op("write", ino=1, offset=offset, data=op.data[:size])
    for label, data in _content_variants(b"", [op]):
        if label.startswith("sectors"):
            assert len(data) % SECTOR == 0 or len(data) == offset + size, (label, len(data))
