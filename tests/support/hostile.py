"""Hostile reports: files written by someone who wants the vendor's ingest to fail.

One builder per class of attack (issue 15, ADR 0016). Each returns a :class:`Case`: the
file, the status and finding codes ingest must answer with, and the bound its cost must
stay within. The test suite (tests/integration/test_ingest_hostile.py) and the benchmark
(bench/ingest_hostile.py) use the same builders, so what is measured is what is tested.

Every case starts from a real site: a ledger written by the real LedgerWriter under a
manual clock, exported by the real exporter, whose first report the vendor has
acknowledged. The attacker holds what a customer with root holds: the report, the
instance's signing key (so a changed file can be signed again) and the vendor's public
keys; never the chain key or the vendor's private keys.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from meterbox.crypto import KEY_LEN
from meterbox.ledger import RecordType
from meterbox.ledger._seal import Sealer
from meterbox.vendorkit import keys as vendor_keys
from meterbox.vendorkit.ingest import ingest
from support.ledger import counter_random
from support.report_surgery import join, split
from support.vendor_ingest import VENDOR_NOW, Site, issue, make_home, make_site

_U32 = struct.Struct(">I")
SIGNATURE_DOMAIN = b"meterbox-report/1\x00"


@dataclass(frozen=True)
class Case:
    name: str
    path: Path
    status: str
    #: Codes that must be among the findings.
    codes: frozenset[str]
    #: Codes that must not be among them (what the cheap checks spare the vendor).
    absent: frozenset[str] = frozenset()


@dataclass
class World:
    """A vendor home with one license and a site whose first report was acknowledged."""

    home: Path
    site: Site
    root: Path

    def report(self, name: str) -> tuple[bytes, Path]:
        path = self.root / f"{name}.mbr"
        self.site.export(path)
        return path.read_bytes(), path


def world(root: Path) -> World:
    home = make_home(root)
    site = make_site(home, root / "ledger", [issue(home)])
    for _ in range(3):
        site.use("solver", 2)
    first = site.export(root / "first.mbr")
    out = ingest(home, first, now=VENDOR_NOW)
    if not out.accepted:
        raise AssertionError(f"the honest first report was not accepted: {out.to_json()}")
    site.use("solver", 1)
    return World(home, site, root)


def _sign(site: Site, body: bytes) -> bytes:
    return body + site.writer.instance_key.sign(SIGNATURE_DOMAIN + hashlib.sha256(body).digest())


def _container(header_bytes: bytes, frames: bytes, trailer: dict[str, Any]) -> bytes:
    t = msgpack.packb(trailer, use_bin_type=True)
    return (
        b"MBXR\x01"
        + _U32.pack(len(header_bytes))
        + header_bytes
        + frames
        + b"MBXT"
        + _U32.pack(len(t))
        + t
    )


def _header_with(header: dict[str, Any], key: str, raw_value: bytes) -> bytes:
    """The header map packed with one more entry whose value is given as raw msgpack."""
    packed = msgpack.packb(header, use_bin_type=True)
    n = len(header)
    if n >= 15:
        raise ValueError("header too large for a fixmap")
    return bytes([0x80 | (n + 1)]) + packed[1:] + msgpack.packb(key) + raw_value


def _resealed(w: World, name: str, edit: Callable[[dict[str, Any]], bytes]) -> Path:
    """The site's next report with its header rewritten by ``edit``, signed again."""
    data, _ = w.report(name + ".orig")
    parts = split(data)
    frames = b"".join(parts.frames)
    path = w.root / f"{name}.mbr"
    path.write_bytes(_sign(w.site, _container(edit(dict(parts.header)), frames, parts.trailer)))
    return path


# ----------------------------------------------------------------------- cases
def oversized_header(w: World) -> Case:
    """A header just over the 1 MiB bound: 17 licenses of 64 KiB, signed."""

    def edit(h: dict[str, Any]) -> bytes:
        h["licenses"] = [b"\x00" * (64 << 10)] * 17
        return msgpack.packb(h, use_bin_type=True)

    return Case(
        "oversized_header", _resealed(w, "oversized_header", edit), "unusable",
        frozenset({"report.malformed"}), frozenset({"license.invalid"}),
    )  # fmt: skip


def junk_licenses(w: World) -> Case:
    """The issue's file: 100,000 junk licenses in an unsigned 300 KB header."""
    data, _ = w.report("junk.orig")
    parts = split(data)
    parts.header["licenses"] = [b"\x01\x02"] * 100_000
    body = _container(
        msgpack.packb(parts.header, use_bin_type=True), b"".join(parts.frames), parts.trailer
    )
    path = w.root / "junk_licenses.mbr"
    path.write_bytes(body + b"\x00" * 64)
    return Case(
        "junk_licenses", path, "rejected",
        frozenset({"report.malformed"}), frozenset({"license.invalid"}),
    )  # fmt: skip


def licenses_at_limit(w: World) -> Case:
    """256 junk licenses (the most a header may list), signed: capped findings."""

    def edit(h: dict[str, Any]) -> bytes:
        h["licenses"] = [bytes([i % 256]) * 40 for i in range(256)]
        return msgpack.packb(h, use_bin_type=True)

    return Case(
        "licenses_at_limit", _resealed(w, "licenses_at_limit", edit), "rejected",
        frozenset({"license.invalid", "findings.omitted"}),
    )  # fmt: skip


def unsigned_edit(w: World) -> Case:
    """One flipped byte in a usage record, not signed again."""
    data, _ = w.report("flip.orig")
    raw = bytearray(data)
    raw[-200] ^= 0x01
    path = w.root / "unsigned_edit.mbr"
    path.write_bytes(bytes(raw))
    return Case(
        "unsigned_edit", path, "rejected",
        frozenset({"report.signature_invalid"}), frozenset({"record.unauthentic"}),
    )  # fmt: skip


def _header_field(w: World, name: str, key: str, value: object, codes: set[str]) -> Case:
    """A header whose ``key`` is set to ``value``, signed again: rejected with ``codes``."""

    def edit(h: dict[str, Any]) -> bytes:
        h[key] = value
        return msgpack.packb(h, use_bin_type=True)

    return Case(name, _resealed(w, name, edit), "rejected", frozenset(codes))


def huge_counts(w: World) -> Case:
    """frames_len = 2^62: a header promising more bytes than any file holds."""
    return _header_field(w, "huge_counts", "frames_len", 1 << 62, {"report.truncated"})


def huge_acked(w: World) -> Case:
    """acked = [1, 2^62]: once made the verifier allocate 2^62 bytes."""
    return _header_field(w, "huge_acked", "acked", [1, 1 << 62], {"report.malformed"})


def huge_created(w: World) -> Case:
    """created_ms = 2^62, signed: a creation time whose microseconds overflow 64 bits."""
    return _header_field(w, "huge_created", "created_ms", 1 << 62, {"report.limit_exceeded"})


def deep_nesting(w: World) -> Case:
    """The header's extra field nested 100,000 arrays deep."""

    def edit(h: dict[str, Any]) -> bytes:
        h.pop("extra", None)
        return _header_with(h, "extra", b"\x91" * 100_000 + b"\xc0")

    return Case(
        "deep_nesting", _resealed(w, "deep_nesting", edit), "unusable",
        frozenset({"report.malformed"}),
    )  # fmt: skip


def duplicate_keys(w: World) -> Case:
    """base_seq twice in the header: which one would count?"""

    def edit(h: dict[str, Any]) -> bytes:
        return _header_with(h, "base_seq", msgpack.packb(0))

    return Case(
        "duplicate_keys", _resealed(w, "duplicate_keys", edit), "unusable",
        frozenset({"report.malformed"}),
    )  # fmt: skip


def huge_amounts(w: World) -> Case:
    """Three usage records of 2^62-1 units each, sealed by the real writer and signed."""
    for _ in range(3):
        w.site.use("solver", (1 << 62) - 1)
    _, path = w.report("huge_amounts")
    return Case("huge_amounts", path, "rejected", frozenset({"record.payload_invalid"}))


def forged_epochs(w: World, count: int = 2_000) -> Case:
    """EPOCH records made with only the vendor's public key, each claiming a far epoch.

    Each claims ``70,000 * i`` epochs past the acknowledged one: before the ratchet
    bound, each cost up to 70,000 key derivations (the issue measured 0.8 s apiece).
    """
    data, _ = w.report("forged.orig")
    parts = split(data)
    writer = w.site.writer
    seq = writer.head.seq + 1
    pub = vendor_keys.VendorKeys.load(w.home).pair()
    for i in range(count):
        forger = Sealer(
            instance_id=writer.instance_id,
            vendor_key=pub.ledger_private.public_key(),
            vendor_key_id=pub.key_id,
            chain_key=b"\x42" * KEY_LEN,
            epoch=writer.epoch + 1 + 69_999 * (i % 2) + i,
            next_seq=seq,
            head_hash=b"\x00" * 32,
            random=counter_random(i),
        )
        parts.frames.append(
            forger.begin_epoch(boot_id=b"\x02" * 16, wall_ms=10, mono_ms=10, first=True)
        )
        seq += 1
    path = w.root / "forged_epochs.mbr"
    path.write_bytes(join(parts, writer.instance_key))
    return Case("forged_epochs", path, "rejected", frozenset({"epoch.forged"}))


def absurd_content(w: World) -> Case:
    """A valid signature over records no server writes: times past year 9999, giant names."""
    w.site.clock.step_wall(1 << 60)
    w.site.use("solver", 1)
    w.site.clock.step_wall(-(1 << 60))
    w.site.use("x" * 5000, 10**15)
    w.site.writer.append(RecordType.SEAT_CHECKOUT, {"i": "L" * 9000, "f": "", "e": 0})
    _, path = w.report("absurd_content")
    return Case("absurd_content", path, "rejected", frozenset({"record.payload_invalid"}))


def too_many_records(w: World) -> Case:
    """More records than the vendor's bound (the test lowers the bound to 5)."""
    for _ in range(10):
        w.site.use("solver", 1)
    _, path = w.report("too_many_records")
    return Case("too_many_records", path, "rejected", frozenset({"report.limit_exceeded"}))


BUILDERS: dict[str, Callable[[World], Case]] = {
    "oversized_header": oversized_header,
    "junk_licenses": junk_licenses,
    "licenses_at_limit": licenses_at_limit,
    "unsigned_edit": unsigned_edit,
    "huge_counts": huge_counts,
    "huge_acked": huge_acked,
    "huge_created": huge_created,
    "deep_nesting": deep_nesting,
    "duplicate_keys": duplicate_keys,
    "huge_amounts": huge_amounts,
    "forged_epochs": forged_epochs,
    "absurd_content": absurd_content,
}


def build(root: Path, name: str) -> tuple[World, Case]:
    w = world(root)
    return w, BUILDERS[name](w)


__all__ = ["BUILDERS", "Case", "World", "build", "too_many_records", "world"]
