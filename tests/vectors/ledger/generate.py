"""Generate the sealed-ledger and report test vectors in tests/vectors/ledger/.

Every byte is reproducible: the vendor keys are fixed, the ledger's randomness
(instance id, chain key, instance signing key, epoch salts) comes from a counter,
time comes from :class:`meterbox.clock.ManualClock`, and Ed25519 signatures are
deterministic. Two things are not injectable through the public API and are
pinned here for the duration of the run only:

- HPKE's ephemeral key. ``cryptography`` draws it from the OS inside
  ``Suite.encrypt``; the generator swaps in an RFC 9180 base-mode sealer for the
  same suite (DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM) whose
  ephemeral secret is a hash of its inputs. Its output is ordinary HPKE: the
  verifier opens it with ``cryptography``'s own ``Suite.decrypt``, so the vectors
  also pin interoperability of the epoch format.
- The ``software`` field of the report header, so a version bump does not churn
  the vectors.

Layout written under ``--out`` (default: this directory, tests/vectors/ledger/):

- ``vendor_key.json``           the fixed vendor X25519 keys (TEST KEYS, never use them)
- ``valid/<name>.report``       reports that verify with no findings
- ``valid/<name>.json``         the records, head and chain state they verify to
- ``valid/minimal.mbl``         the ledger file behind ``minimal.report`` (docs/spec/ledger.md)
- ``invalid/<name>.report``     reports that verify with findings
- ``invalid/<name>.json``       the exact findings (code, severity, seq) expected

The generator writes record version 3 (the writer's). The vectors of record versions 1
and 2 in ``v1/`` and ``v2/`` were made by the writers of those versions and are kept as
they were, not regenerated: reports of servers not yet upgraded must keep verifying.
``v2/site/`` is a whole server ledger directory written by the version 2 writer, which
this writer must open and continue.

The generator checks every vector against the real verifier before writing and
stops if a vector does not produce the codes declared for it here.

Usage, from ``tests/`` (``make vectors`` regenerates every vector set):
``python -m vectors.ledger.generate [--out DIR]``. The fixed keys, the counter
randomness and the report surgery come from ``support.ledger`` and
``support.report_surgery``, shared with the tests that take reports apart by hand,
so both build the same bytes the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import io
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from meterbox.clock import ManualClock
from meterbox.crypto import (
    key_id,
    x25519_raw_private,
    x25519_raw_public,
)
from meterbox.ledger import (
    Head,
    Known,
    LedgerConfig,
    LedgerWriter,
    Record,
    RecordType,
    ReportResult,
    ReportVerifier,
    _keys,
    _report,
    export_report,
)
from meterbox.ledger._fold import LedgerFolder
from meterbox.ledger._format import EPOCH_BODY_LEN, FILE_HEADER_LEN
from meterbox.ledger.records import StateRebuilt
from meterbox.server._core.ledgerstate import LedgerState
from support.ledger import (
    OTHER_VENDOR,
    OTHER_VENDOR_ID,
    VENDOR,
    VENDOR_ID,
    counter_random,
    next_epoch_forger,
    reseal_with_key_state,
)
from support.report_surgery import Parts, frame_offsets, frame_seq, join, split

#: The checked-in vectors live beside this generator.
HERE = Path(__file__).resolve().parent
LICENSE_ID = "lic_00112233445566aa"
#: Stands in for the license files a server puts in its report header.
LICENSE_BYTES = b"placeholder for the bytes of lic_00112233445566aa.lic"
SOFTWARE_VERSION = "vectors"


# --------------------------------------------------------------- determinism
# RFC 9180 identifiers of the suite meterbox uses.
_KEM_SUITE = b"KEM" + (0x0020).to_bytes(2, "big")
_HPKE_SUITE = b"HPKE" + (0x0020).to_bytes(2, "big") + (0x0001).to_bytes(2, "big")
_HPKE_SUITE += (0x0002).to_bytes(2, "big")


def _labeled_extract(suite: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt, b"HPKE-v1" + suite + label + ikm, hashlib.sha256).digest()


def _labeled_expand(suite: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    full = length.to_bytes(2, "big") + b"HPKE-v1" + suite + label + info
    return HKDFExpand(hashes.SHA256(), length, full).derive(prk)


def deterministic_hpke_seal(public_key: X25519PublicKey, plaintext: bytes, info: bytes) -> bytes:
    """RFC 9180 single-shot base-mode seal with an ephemeral key derived from the inputs."""
    pk_r = x25519_raw_public(public_key)
    sk_e = X25519PrivateKey.from_private_bytes(
        hashlib.sha256(b"meterbox vectors hpke ephemeral\x00" + pk_r + info + plaintext).digest()
    )
    enc = x25519_raw_public(sk_e.public_key())
    dh = sk_e.exchange(public_key)
    eae_prk = _labeled_extract(_KEM_SUITE, b"", b"eae_prk", dh)
    shared = _labeled_expand(_KEM_SUITE, eae_prk, b"shared_secret", enc + pk_r, 32)
    psk_id_hash = _labeled_extract(_HPKE_SUITE, b"", b"psk_id_hash", b"")
    info_hash = _labeled_extract(_HPKE_SUITE, b"", b"info_hash", info)
    context = b"\x00" + psk_id_hash + info_hash
    secret = _labeled_extract(_HPKE_SUITE, shared, b"secret", b"")
    key = _labeled_expand(_HPKE_SUITE, secret, b"key", context, 32)
    base_nonce = _labeled_expand(_HPKE_SUITE, secret, b"base_nonce", context, 12)
    return enc + AESGCM(key).encrypt(base_nonce, plaintext, b"")


@contextlib.contextmanager
def pinned() -> Iterator[None]:
    """Pin HPKE's ephemeral key and the report's software string, then restore them."""
    saved_seal, saved_version = _keys.__dict__["hpke_seal"], _report.__dict__["__version__"]
    # setattr, not assignment: these are module globals looked up at call time.
    setattr(_keys, "hpke_seal", deterministic_hpke_seal)  # noqa: B010
    setattr(_report, "__version__", SOFTWARE_VERSION)  # noqa: B010
    try:
        yield
    finally:
        setattr(_keys, "hpke_seal", saved_seal)  # noqa: B010
        setattr(_report, "__version__", saved_version)  # noqa: B010


# ----------------------------------------------------------------- ledgers
@dataclass
class Ledger:
    writer: LedgerWriter
    clock: ManualClock
    directory: Path
    #: (seq, type, payload) of every record the generator itself appended.
    appended: list[tuple[int, RecordType, dict[str, Any]]] = field(default_factory=list)

    def add(self, rtype: RecordType, payload: dict[str, Any], step_ms: int = 1000) -> None:
        self.clock.advance(step_ms)
        done = self.writer.append(rtype, payload)
        self.appended.append((done.seq, rtype, payload))

    def usage(self, n: int, start: int = 0) -> None:
        for i in range(start, start + n):
            self.add(
                RecordType.USAGE,
                {
                    "m": "solver-runs",
                    "a": i % 7 + 1,
                    "c": f"ws-{i % 3}",
                    "l": LICENSE_ID,
                    "k": f"req-{i:04d}",
                },
            )

    def export(self, acked: Head | None = None) -> bytes:
        buf = io.BytesIO()
        export_report(self.writer, buf, clock=self.clock, licenses=[LICENSE_BYTES], acked=acked)
        return buf.getvalue()

    def reopen(
        self, seed: int, *, boot: bytes | None = None, folder: LedgerFolder | None = None
    ) -> None:
        if boot is not None:
            self.clock.reboot(boot)
        self.writer = LedgerWriter.open(
            self.directory,
            clock=self.clock,
            config=self.writer.config,
            random=counter_random(seed),
            folder=folder,
        )


def new_ledger(
    directory: Path,
    seed: int,
    *,
    vendor: X25519PrivateKey = VENDOR,
    config: LedgerConfig | None = None,
) -> Ledger:
    clock = ManualClock()
    writer = LedgerWriter.create(
        directory,
        vendor_ledger_key=vendor.public_key(),
        vendor_key_id=key_id(x25519_raw_public(vendor.public_key())),
        clock=clock,
        genesis={"l": [LICENSE_ID]},
        config=config,
        random=counter_random(seed),
    )
    return Ledger(writer, clock, directory)


# --------------------------------------------------------------- verifying
def verify(data: bytes, known: Known | None) -> tuple[ReportResult, list[tuple[Record, bool]]]:
    verifier = ReportVerifier({VENDOR_ID: VENDOR}, known=known)
    records = list(verifier.records(io.BytesIO(data)))
    return verifier.result, records


def known_from(result: ReportResult) -> Known:
    assert result.head is not None
    return Known(head=result.head, chain=result.chain, instance_key=result.instance_key)


def json_safe(value: Any) -> Any:
    """Payload values as JSON: bytes become {"bytes": hex}; maps and lists recurse."""
    if isinstance(value, bytes):
        return {"bytes": value.hex()}
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def known_json(known: Known | None) -> dict[str, Any] | None:
    if known is None:
        return None
    return {
        "head": known.head.to_dict(),
        "chain": None
        if known.chain is None
        else {"epoch": known.chain.epoch, "key": known.chain.key.hex()},
        "instance_key": None if known.instance_key is None else known.instance_key.hex(),
    }


def _dump(value: Any) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True).encode() + b"\n"


class Vectors:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    def valid(
        self,
        name: str,
        description: str,
        data: bytes,
        ledger: Ledger,
        known: Known | None = None,
    ) -> ReportResult:
        result, records = verify(data, known)
        if result.findings:
            raise SystemExit(f"valid vector {name} has findings: {result.findings}")
        # Every record this generator appended comes back, with its seq and payload.
        by_seq = {r.seq: r for r, _ in records}
        for seq, rtype, payload in ledger.appended:
            if seq < result.base_seq:
                continue
            got = by_seq.get(seq)
            if got is None or got.type is not rtype or got.payload != payload:
                raise SystemExit(f"valid vector {name}: record {seq} did not round-trip: {got}")
        assert result.head is not None and result.chain is not None
        self.files[f"valid/{name}.report"] = data
        self.files[f"valid/{name}.json"] = _dump(
            {
                "description": description,
                "report": f"{name}.report",
                "known": known_json(known),
                "findings": [],
                "instance_id": result.instance_id.hex(),
                "instance_key": result.instance_key.hex(),
                "vendor_key_id": result.vendor_key_id.hex(),
                "base_seq": result.base_seq,
                "frames": result.records,
                "records": [
                    {
                        "seq": r.seq,
                        "epoch": r.epoch,
                        "type": r.type.name,
                        "wall_ms": r.wall_ms,
                        "mono_ms": r.mono_ms,
                        "payload": json_safe(r.payload),
                        "acked": acked,
                    }
                    for r, acked in records
                ],
                "head": result.head.to_dict(),
                "chain": {"epoch": result.chain.epoch, "key": result.chain.key.hex()},
                "digest": hashlib.sha256(data).hexdigest(),
            }
        )
        return result

    def invalid(
        self,
        name: str,
        description: str,
        data: bytes,
        codes: set[str],
        known: Known | None = None,
    ) -> None:
        result, _ = verify(data, known)
        if result.codes != codes:
            raise SystemExit(
                f"invalid vector {name}: expected codes {sorted(codes)}, "
                f"the verifier found {sorted(result.codes)}: {result.findings}"
            )
        self.files[f"invalid/{name}.report"] = data
        self.files[f"invalid/{name}.json"] = _dump(
            {
                "description": description,
                "report": f"{name}.report",
                "known": known_json(known),
                "codes": sorted(codes),
                "critical": result.critical,
                "findings": [
                    {"code": f.code, "severity": f.severity, "seq": f.seq} for f in result.findings
                ],
            }
        )


# ----------------------------------------------------------------- vectors
def build() -> dict[str, bytes]:
    with pinned(), tempfile.TemporaryDirectory() as tmp:
        return _build(Path(tmp))


def _build(tmp: Path) -> dict[str, bytes]:
    from meterbox.ledger import findings as F

    v = Vectors()
    v.files["vendor_key.json"] = _dump(
        {
            "warning": "TEST KEYS ONLY: published in the repository; never use them for "
            "anything real",
            "vendor": {
                "key_id": VENDOR_ID.hex(),
                "x25519_private": x25519_raw_private(VENDOR).hex(),
                "x25519_public": x25519_raw_public(VENDOR.public_key()).hex(),
            },
            "other_vendor": {
                "key_id": OTHER_VENDOR_ID.hex(),
                "x25519_private": x25519_raw_private(OTHER_VENDOR).hex(),
                "x25519_public": x25519_raw_public(OTHER_VENDOR.public_key()).hex(),
            },
            "verify_with": "vendor (a map {key_id: private key} holding only it)",
        }
    )

    # minimal: the example of docs/spec/ledger.md and docs/spec/report.md.
    m = new_ledger(tmp / "minimal", seed=7)
    m.add(
        RecordType.USAGE,
        {"m": "solver-runs", "a": 5, "c": "ws-17", "l": LICENSE_ID, "k": "req-0001"},
    )
    m.add(
        RecordType.SEAT_CHECKOUT,
        {"i": "lease-1", "f": "cad", "c": "ws-17", "l": LICENSE_ID, "e": 1_767_225_662},
    )
    v.files["valid/minimal.mbl"] = (m.directory / "ledger.mbl").read_bytes()
    v.valid(
        "minimal",
        "EPOCH, GENESIS, one USAGE and one SEAT_CHECKOUT: the example of the specs",
        m.export(),
        m,
    )
    m.writer.close()

    # full: every record type a server writes, epoch rolls, checkpoints, a clock
    # step, a clean shutdown, a reboot and a BOOT.
    config = LedgerConfig(epoch_max_records=6, checkpoint_every=5)
    f = new_ledger(tmp / "full", seed=11, config=config)
    f.add(RecordType.LICENSE_INSTALLED, {"l": LICENSE_ID})
    f.usage(3)
    f.add(RecordType.SEAT_CHECKOUT, {"i": "lease-1", "f": "cad", "c": "ws-1", "l": LICENSE_ID})
    f.add(RecordType.SEAT_RENEW, {"i": "lease-1", "e": 1_767_225_700})
    f.add(RecordType.SEAT_DENIED, {"f": "cad", "c": "ws-2"})
    f.add(RecordType.SEAT_RELEASE, {"i": "lease-1"})
    f.add(RecordType.SEAT_CHECKOUT, {"i": "lease-2", "f": "cad", "c": "ws-2", "l": LICENSE_ID})
    f.add(RecordType.SEAT_EXPIRE, {"i": "lease-2"}, step_ms=90_000)
    f.add(RecordType.USAGE_DECREMENT, {"m": "solver-runs", "a": 2, "c": "ws-1", "l": LICENSE_ID})
    f.add(RecordType.USAGE_DENIED, {"m": "solver-runs", "a": 5000, "c": "ws-1", "l": LICENSE_ID})
    f.add(RecordType.HEARTBEAT, {})
    f.clock.step_wall(-3_600_000)  # the admin sets the wall clock back one hour
    f.add(RecordType.HEARTBEAT, {})
    f.add(RecordType.TOPUP_IMPORTED, {"t": "top_00112233445566cc", "m": "solver-runs", "a": 500})
    f.add(RecordType.RECEIPT_IMPORTED, {"r": "rcpt_00112233445566dd", "s": 3})
    f.writer.close()
    f.reopen(seed=111, boot=b"\x02" * 16)
    f.usage(2, start=3)
    full = v.valid(
        "full",
        "every server record type, epoch rolls, checkpoints, a CLOCK_STEP, SHUTDOWN, "
        "a reboot and BOOT",
        f.export(),
        f,
    )
    # continued: after the receipt for 'full' the server compacts what it covers
    # (down to an epoch boundary) and keeps going; the next report starts at
    # base_seq > 0 and is anchored on what 'full' acknowledged.
    assert full.head is not None
    removed = f.writer.compact(full.head)
    assert removed > 0, "compaction removed nothing"
    f.usage(4, start=5)
    known_full = known_from(full)
    continued = f.export(acked=full.head)
    v.valid(
        "continued",
        "the next report of the 'full' ledger after compaction (base_seq > 0), verified "
        "against what 'full' acknowledged",
        continued,
        f,
        known_full,
    )
    v.invalid(
        "continued-unanchored",
        "the 'continued' report verified with no acknowledged state: a warning only",
        continued,
        {F.LEDGER_UNANCHORED},
    )
    f.writer.close()

    # state (revision 1.2): a server that folds its records; every epoch after the
    # first opens with a STATE record, and a STATE_REBUILT record is a finding.
    st = new_ledger(tmp / "state", seed=13, config=LedgerConfig(epoch_max_records=4))
    st.writer.close()
    st.reopen(seed=131, folder=LedgerState())
    st.usage(3)
    st.add(
        RecordType.SEAT_CHECKOUT,
        {"i": "lease-1", "f": "cad", "c": "ws-1", "l": LICENSE_ID, "e": 1_767_229_200},
    )
    st.add(
        RecordType.TOPUP_IMPORTED,
        {"t": "top_00112233445566ee", "l": LICENSE_ID, "m": "solver-runs", "a": 50},
    )
    st.usage(2, start=3)
    v.valid(
        "state",
        "revision 1.2: a folding writer; each epoch after the first opens with STATE",
        st.export(),
        st,
    )
    st.add(
        RecordType.STATE_REBUILT,
        StateRebuilt(
            cache="state.db",
            reason="differed",
            less=True,
            items=("usage lic_00112233445566aa/solver-runs/total: cache 0, ledger 24",),
            cache_seq=9,
        ).to_map(),
    )
    v.invalid(
        "state-rebuilt",
        "the 'state' ledger after the server found state.db claiming less usage than "
        "the ledger and rebuilt it: state.rebuilt, critical",
        st.export(),
        {F.STATE_REBUILT},
    )
    st.writer.close()

    # state-quota (revision 1.10): a cluster node's open quota block and the units it
    # granted from it, carried by the next epoch's STATE record (key qb).
    sq = new_ledger(tmp / "state-quota", seed=17, config=LedgerConfig(epoch_max_records=4))
    sq.writer.close()
    sq.reopen(seed=171, folder=LedgerState())
    sq.add(
        RecordType.QUOTA_BLOCK_TAKEN,
        {"b": "node0.00112233445566ff", "l": LICENSE_ID, "m": "solver-runs", "p": "total",
         "n": 64},
    )  # fmt: skip
    sq.usage(5)
    v.valid(
        "state-quota",
        "revision 1.10: an epoch's STATE record carries the node's open quota block (qb)",
        sq.export(),
        sq,
    )
    sq.writer.close()

    # usage: six usage records; the source of the tampered vectors below.
    u = new_ledger(tmp / "usage", seed=7)
    u.usage(6)
    base = u.export()
    v.valid("usage", "EPOCH, GENESIS and six USAGE records (seq 0..7)", base, u)
    key = u.writer.instance_key
    parts = split(base)

    flipped = bytearray(base)
    flipped[frame_offsets(base)[3][0] + 2 + 30 + 1] ^= 0x01
    v.invalid(
        "flipped-byte",
        "one bit of record 3's ciphertext flipped; the file is not re-signed",
        bytes(flipped),
        {F.RECORD_UNAUTHENTIC, F.REPORT_SIGNATURE_INVALID, F.LEDGER_HEAD_MISMATCH},
    )
    v.invalid(
        "deleted-record",
        "record 4 removed; trailer and signature rebuilt with the instance key",
        join(Parts(parts.header, parts.frames[:4] + parts.frames[5:], parts.trailer), key),
        {F.RECORD_MISSING},
    )
    v.invalid(
        "duplicated-record",
        "record 4 appears twice; trailer and signature rebuilt with the instance key",
        join(Parts(parts.header, parts.frames[:5] + parts.frames[4:], parts.trailer), key),
        {F.RECORD_DUPLICATE},
    )
    swapped = list(parts.frames)
    swapped[3], swapped[4] = swapped[4], swapped[3]
    v.invalid(
        "swapped-records",
        "records 3 and 4 swapped; trailer and signature rebuilt with the instance key",
        join(Parts(parts.header, swapped, parts.trailer), key),
        {F.RECORD_OUT_OF_ORDER},
    )
    v.invalid(
        "truncated-file",
        "the file cut in the middle of record 5",
        base[: frame_offsets(base)[5][0] + 20],
        {F.REPORT_TRUNCATED},
    )
    v.invalid(
        "truncated-resigned",
        "the last two records removed, frames_len fixed and re-signed, but the trailer "
        "still claims the original head",
        join(Parts(parts.header, parts.frames[:-2], parts.trailer), key, fix_trailer=False),
        {F.LEDGER_TRUNCATED},
    )

    # Another instance of the same vendor; its first epoch rolls at seq 8, right
    # after the last record of 'usage', so its second epoch lines up for a splice.
    other = new_ledger(tmp / "other", seed=2, config=LedgerConfig(epoch_max_records=7))
    other.usage(10)
    other_parts = split(other.export())
    v.invalid(
        "spliced-record",
        "record 4 replaced by record 4 of another ledger of the same vendor; re-signed",
        join(
            Parts(
                parts.header,
                parts.frames[:4] + [other_parts.frames[4]] + parts.frames[5:],
                parts.trailer,
            ),
            key,
        ),
        {F.RECORD_UNAUTHENTIC},
    )
    other_epoch1 = [fr for fr in other_parts.frames if frame_seq(fr) >= 8]
    assert other_epoch1[0][3] == RecordType.EPOCH
    v.invalid(
        "spliced-epoch",
        "another ledger's epoch 1 (seq 8 on) appended after record 7; re-signed",
        join(Parts(parts.header, parts.frames + other_epoch1, parts.trailer), key),
        {F.EPOCH_FOREIGN},
    )
    other.writer.close()

    forger = next_epoch_forger(u.writer, random=counter_random(4242))
    forged = [forger.begin_epoch(boot_id=b"\x01" * 16, wall_ms=1, mono_ms=1, first=True)]
    forged.append(
        forger.seal(
            RecordType.USAGE,
            {"m": "solver-runs", "a": -1_000_000, "c": "ws-0", "l": LICENSE_ID},
            wall_ms=2,
            mono_ms=2,
        )
    )
    v.invalid(
        "forged-epoch",
        "an epoch 1 made with only the vendor's public key and a chain key of the "
        "forger's choosing, appended with one USAGE record; re-signed",
        join(Parts(parts.header, parts.frames + forged, parts.trailer), key),
        {F.EPOCH_FORGED},
    )

    bad_version = bytearray(base)
    bad_version[4] = 2
    v.invalid(
        "unknown-report-version",
        "report version byte set to 2",
        bytes(bad_version),
        {F.REPORT_UNKNOWN_VERSION},
    )
    record_version = bytearray(parts.frames[3])
    record_version[2] = 9
    v.invalid(
        "unknown-record-version",
        "record 3's version byte set to 9; re-signed",
        join(
            Parts(
                parts.header,
                parts.frames[:3] + [bytes(record_version)] + parts.frames[4:],
                parts.trailer,
            ),
            key,
        ),
        {F.RECORD_UNKNOWN_VERSION, F.RECORD_MISSING},
    )

    # rollback: an old report submitted after the vendor acknowledged a newer one.
    u.usage(3, start=6)
    later = verify(u.export(), None)[0]
    v.invalid(
        "rollback-replayed-old-report",
        "the 'usage' report verified against a later acknowledged head (seq 10)",
        base,
        {F.LEDGER_ROLLBACK},
        known_from(later),
    )
    u.writer.close()

    o = new_ledger(tmp / "othervendor", seed=5, vendor=OTHER_VENDOR)
    o.usage(2)
    v.invalid(
        "other-vendor",
        "a ledger sealed to another vendor's key (other_vendor in vendor_key.json)",
        o.export(),
        {F.REPORT_WRONG_VENDOR_KEY},
    )
    o.writer.close()

    # fork: a snapshot of the data directory is taken; the vendor later acknowledges
    # a head past it; the customer restores the snapshot and keeps going, so the
    # record at the acknowledged seq differs from the acknowledged one.
    k = new_ledger(tmp / "fork", seed=9)
    k.usage(3)
    snapshot = tmp / "fork-snapshot"
    shutil.copytree(k.directory, snapshot)
    k.usage(5, start=3)
    acked = verify(k.export(), None)[0]
    k.writer.close()
    restored = Ledger(k.writer, k.clock, snapshot)
    restored.reopen(seed=92)
    restored.usage(20, start=100)
    v.invalid(
        "fork-restored-snapshot",
        "a snapshot older than the acknowledged head restored and extended past it",
        restored.export(),
        {F.LEDGER_FORK},
        known_from(acked),
    )
    restored.writer.close()

    # recovered: a torn tail is cut on restart and recorded; a warning only.
    t = new_ledger(tmp / "torn", seed=13)
    t.usage(2)
    t.writer.close()
    with open(t.directory / "ledger.mbl", "ab") as fh:
        fh.write(b"\x00\x60" + b"\xaa" * 20)  # a frame whose body never reached the disk
    t.reopen(seed=131)
    t.usage(1, start=2)
    v.invalid(
        "recovered-torn-tail",
        "22 bytes of torn tail cut on restart; the RECOVERY record is reported",
        t.export(),
        {F.LEDGER_RECOVERED},
    )
    t.writer.close()

    # Record version 2: what the per-batch key state stops.
    # shortened: the ledger cut at a frame boundary inside the current epoch while the
    # server was stopped; the server's next open sees the key state name a later batch.
    c = new_ledger(tmp / "cut", seed=17)
    c.usage(4)
    c.writer.close()
    ledger_file = c.directory / "ledger.mbl"
    cut_at = frame_offsets_of_file(ledger_file.read_bytes())[-2]
    with open(ledger_file, "r+b") as fh:
        fh.truncate(cut_at)
    c.reopen(seed=171)
    c.usage(1, start=4)
    v.invalid(
        "shortened-ledger",
        "ledger.mbl cut by two records at a frame boundary while the server was stopped; "
        "on restart the key state names a later batch and the server records it",
        c.export(),
        {F.LEDGER_SHORTENED},
    )
    c.writer.close()

    # key-state-restored: chain.key saved, put back after more batches were written.
    k = new_ledger(tmp / "keycopy", seed=19)
    k.usage(1)
    saved = (k.directory / "chain.key").read_bytes()
    k.usage(3, start=1)
    k.writer.close()
    (k.directory / "chain.key").write_bytes(saved)
    k.reopen(seed=191)
    v.invalid(
        "key-state-restored",
        "a copy of chain.key taken three batches earlier put back before a restart; the "
        "ledger was not cut, but nothing vouches for its end any more: the server records "
        "the key state as behind its ledger",
        k.export(),
        {F.LEDGER_KEY_STATE_BEHIND},
    )
    k.writer.close()

    # resealed-batch: record 3 (a USAGE of an earlier batch) encrypted again with another
    # amount, with the record key read from chain.key at attack time; re-signed with
    # instance.key. Its batch seal no longer verifies.
    r = new_ledger(tmp / "reseal", seed=23)
    r.usage(4)
    rparts = split(r.export())
    forged_frame = reseal_with_key_state(
        rparts.frames[3],
        r.directory,
        {"m": "solver-runs", "a": 1, "c": "ws-1", "l": LICENSE_ID, "k": "req-0001"},
    )
    v.invalid(
        "resealed-batch",
        "record 3 encrypted again with the epoch's record key from chain.key (amount 1 "
        "instead of 2), its batch seal kept; re-signed with the instance key",
        join(
            Parts(
                rparts.header,
                [*rparts.frames[:3], forged_frame, *rparts.frames[4:]],
                rparts.trailer,
            ),
            r.writer.instance_key,
        ),
        {F.BATCH_FORGED},
    )
    r.writer.close()

    _epoch_seal_vectors(v, tmp)
    return dict(sorted(v.files.items()))


def _epoch_seal_vectors(v: Vectors, tmp: Path) -> None:
    """Record version 3: the epoch seal (ADR 0030)."""
    from meterbox.ledger import findings as F

    # recovered-torn-epoch: a power loss during the roll at restart left the EPOCH record
    # and the STATE run written with it, but the EPOCH record's last 16 bytes (its epoch
    # seal) as zeros. The next open finds the seal wrong, cuts the write, and records it.
    t = new_ledger(tmp / "torn-epoch", seed=31)
    t.writer.close()
    t.reopen(seed=311, folder=LedgerState())
    t.usage(3)
    t.writer.close()
    ledger_file = t.directory / "ledger.mbl"
    before = ledger_file.read_bytes()
    saved = {name: (t.directory / name).read_bytes() for name in ("chain.key", "ledger.mbl")}
    t.reopen(seed=312, folder=LedgerState())
    t.writer.close()
    after = ledger_file.read_bytes()
    torn = bytearray(_epoch_write(after, len(before)))
    torn[EPOCH_FRAME_LEN - 16 : EPOCH_FRAME_LEN] = bytes(16)
    for name, data in saved.items():
        (t.directory / name).write_bytes(data)
    with open(ledger_file, "ab") as fh:
        fh.write(bytes(torn))
    t.reopen(seed=313, folder=LedgerState())
    cut = t.writer.recovery
    if cut is None or (cut.cut_offset, cut.cut_bytes) != (len(before), len(torn)):
        raise SystemExit(f"recovered-torn-epoch: the open did not cut the torn write: {cut}")
    t.usage(1, start=3)
    v.invalid(
        "recovered-torn-epoch",
        "a power loss during a restart's epoch roll left the EPOCH record with its epoch "
        "seal zeroed and the STATE run after it whole; the next open cut both and recorded "
        "RECOVERY: a warning only",
        t.export(),
        {F.LEDGER_RECOVERED},
    )
    t.writer.close()

    # changed-epoch-seal: one bit of an EPOCH record's seal flipped, the report re-signed:
    # the HPKE seal still opens, the epoch seal does not verify.
    u = new_ledger(tmp / "epoch-seal", seed=37, config=LedgerConfig(epoch_max_records=3))
    u.usage(5)
    parts = split(u.export())
    at = next(i for i, fr in enumerate(parts.frames) if i and fr[3] == RecordType.EPOCH)
    changed = bytearray(parts.frames[at])
    changed[-1] ^= 0x01
    frames = [*parts.frames[:at], bytes(changed), *parts.frames[at + 1 :]]
    v.invalid(
        "changed-epoch-seal",
        f"the last bit of the epoch seal of record {frame_seq(parts.frames[at])} (an EPOCH "
        "record) flipped; re-signed with the instance key",
        join(Parts(parts.header, frames, parts.trailer), u.writer.instance_key),
        {F.EPOCH_UNOPENABLE},
    )
    u.writer.close()


#: A version 3 EPOCH frame: the 2-byte length and a 187-byte body.
EPOCH_FRAME_LEN = 2 + EPOCH_BODY_LEN


def _epoch_write(ledger: bytes, offset: int) -> bytes:
    """The write an open made at ``offset``: its EPOCH frame and the STATE run after it."""
    assert ledger[offset + 3] == RecordType.EPOCH
    end = offset + EPOCH_FRAME_LEN
    while end < len(ledger) and ledger[end + 3] == RecordType.STATE:
        end += 2 + int.from_bytes(ledger[end : end + 2], "big")
    return ledger[offset:end]


def frame_offsets_of_file(data: bytes) -> list[int]:
    """Offsets of the frames of a ledger file (after its header)."""
    out, pos = [], FILE_HEADER_LEN
    while pos < len(data):
        out.append(pos)
        pos += 2 + int.from_bytes(data[pos : pos + 2], "big")
    return out


def write(out: Path) -> None:
    files = build()
    # v1/ and v2/ are kept as the older writers made them; only these are rebuilt.
    for sub in ("valid", "invalid"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)
    for name, data in files.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    write(args.out)
    print(f"wrote ledger vectors to {args.out}")


if __name__ == "__main__":
    main()
