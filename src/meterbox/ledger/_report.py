"""Reports: the file a server exports and the vendor verifies (docs/spec/report.md).

Layout, version 1::

    "MBXR" | u8 version | u32 header_len | header (msgpack map)
    frames (exactly header["frames_len"] bytes, copied from the ledger file)
    "MBXT" | u32 trailer_len | trailer (msgpack map) | Ed25519 signature (64 bytes)

The signature, by the instance key named in the header, covers
``b"meterbox-report/1\\x00" || SHA-256(every byte before the signature)``.

Verification streams: memory stays bounded whatever the report's length (one
frame, one chain hash, one epoch key, and at most ``MAX_PENDING_GAPS`` pending
sequence gaps at a time).
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Final

import msgpack
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meterbox import __version__
from meterbox.clock import Clock
from meterbox.crypto import (
    HASH_LEN,
    AeadKey,
    constant_time_equal,
    ed25519_public_from_raw,
    ed25519_raw_public,
    sha256,
    sign,
    verify_signature,
)
from meterbox.errors import FormatError, MeterboxError, StateError, VerificationError
from meterbox.ledger import _findings as F
from meterbox.ledger._findings import Finding
from meterbox.ledger._format import INSTANCE_ID_LEN, RecordType, chain
from meterbox.ledger._frames import FrameReader, Record, open_record, parse_epoch, parse_header
from meterbox.ledger._keys import open_chain_key, ratchet, record_key
from meterbox.ledger._seal import Head
from meterbox.ledger._writer import LedgerWriter, Snapshot

REPORT_MAGIC: Final = b"MBXR"
TRAILER_MAGIC: Final = b"MBXT"
REPORT_VERSION: Final = 1
SIGNATURE_DOMAIN: Final = b"meterbox-report/1\x00"
SIGNATURE_LEN: Final = 64
MAX_HEADER_LEN: Final = 16 << 20
MAX_TRAILER_LEN: Final = 1 << 16
MAX_PENDING_GAPS: Final = 4096
#: Findings of one code beyond this many are summarised, so a damaged report
#: cannot flood the vendor's store.
MAX_FINDINGS_PER_CODE: Final = 50
_U32 = struct.Struct(">I")
#: Record types the verifier inspects beyond authentication.
_CHECKED_TYPES: Final = frozenset({RecordType.GENESIS, RecordType.CHECKPOINT, RecordType.RECOVERY})


# ---------------------------------------------------------------------- export
@dataclass(frozen=True, slots=True)
class ExportInfo:
    head: Head
    base_seq: int
    frames_len: int
    digest: bytes


def export_report(
    writer: LedgerWriter,
    out: BinaryIO,
    *,
    clock: Clock,
    licenses: list[bytes],
    acked: Head | None,
    extra: Mapping[str, Any] | None = None,
) -> ExportInfo:
    """Write a signed report of every durable record in the ledger file."""
    with writer.snapshot() as snap:
        return _export(writer, snap, out, clock, licenses, acked, extra)


def _export(
    writer: LedgerWriter,
    snap: Snapshot,
    out: BinaryIO,
    clock: Clock,
    licenses: list[bytes],
    acked: Head | None,
    extra: Mapping[str, Any] | None,
) -> ExportInfo:
    file_header, head = snap.header, snap.head
    frames_len = snap.frames_len
    header = {
        "v": REPORT_VERSION,
        "instance_id": writer.instance_id,
        "instance_key": ed25519_raw_public(writer.instance_key.public_key()),
        "vendor_key_id": writer._sealer.vendor_key_id,
        "created_ms": clock.wall_ms(),
        "base_seq": file_header.base_seq,
        "base_hash": file_header.base_hash,
        "frames_len": frames_len,
        "acked": [acked.seq, acked.hash] if acked else None,
        "licenses": licenses,
        "software": f"meterbox {__version__}",
        "extra": dict(extra or {}),
    }
    digest = hashlib.sha256()
    whole = hashlib.sha256()

    def emit(data: bytes) -> None:
        digest.update(data)
        whole.update(data)
        out.write(data)

    packed = msgpack.packb(header, use_bin_type=True)
    emit(REPORT_MAGIC + bytes([REPORT_VERSION]) + _U32.pack(len(packed)) + packed)
    written = 0
    for chunk in snap.chunks():
        emit(chunk)
        written += len(chunk)
    if written != frames_len:
        raise StateError(
            "the ledger file is shorter than its durable length",
            expected=f"{frames_len} bytes of records",
            found=f"{written} bytes",
            hint="the ledger file was changed behind the server's back",
        )
    trailer = msgpack.packb(
        {
            "head_seq": head.seq,
            "head_hash": head.hash,
            "count": head.seq - file_header.base_seq + 1,
        },
        use_bin_type=True,
    )
    emit(TRAILER_MAGIC + _U32.pack(len(trailer)) + trailer)
    signature = sign(writer.instance_key, SIGNATURE_DOMAIN + digest.digest())
    whole.update(signature)
    out.write(signature)
    return ExportInfo(head, file_header.base_seq, frames_len, whole.digest())


# ---------------------------------------------------------------- verification
@dataclass(frozen=True, slots=True)
class ChainState:
    """The last epoch a verifier authenticated: lets the next report be anchored."""

    epoch: int
    key: bytes


@dataclass(frozen=True, slots=True)
class Known:
    """What the vendor already acknowledged for this instance."""

    head: Head
    chain: ChainState | None = None
    instance_key: bytes | None = None


@dataclass(slots=True)
class ReportResult:
    instance_id: bytes = b""
    instance_key: bytes = b""
    vendor_key_id: bytes = b""
    created_ms: int = 0
    base_seq: int = 0
    claimed_head: Head | None = None
    head: Head | None = None
    records: int = 0
    licenses: list[bytes] = field(default_factory=list)
    acked_by_server: Head | None = None
    chain: ChainState | None = None
    digest: bytes = b""
    findings: list[Finding] = field(default_factory=list)

    @property
    def critical(self) -> bool:
        return any(f.severity == "critical" for f in self.findings)

    @property
    def codes(self) -> set[str]:
        return {f.code for f in self.findings}


class _Hashing:
    """Reads from a stream while hashing everything read (for the signature and digest)."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.sig_hash = hashlib.sha256()
        self.whole = hashlib.sha256()
        self.hash_for_sig = True

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        if self.hash_for_sig:
            self.sig_hash.update(data)
        self.whole.update(data)
        return data

    def read_exact(self, n: int, what: str) -> bytes:
        data = self.read(n)
        if len(data) != n:
            raise _Truncated(what)
        return data


class _Truncated(Exception):
    def __init__(self, what: str) -> None:
        self.what = what


class ReportVerifier:
    """Streaming verification of one report. Iterate :meth:`records`, then read :attr:`result`.

    ``vendor_keys`` maps vendor key ids to the X25519 private keys that open epochs.
    ``known`` is what the vendor acknowledged for this instance before, if anything.
    """

    def __init__(
        self,
        vendor_keys: Mapping[bytes, X25519PrivateKey],
        *,
        known: Known | None = None,
        expect_instance: bytes | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        self._vendor_keys = dict(vendor_keys)
        self._known = known
        self._expect_instance = expect_instance
        self._on_progress = on_progress
        self.result = ReportResult()
        self._counts: dict[str, int] = {}

    def _find(self, code: str, severity: F.Severity, message: str, seq: int | None = None) -> None:
        n = self._counts.get(code, 0) + 1
        self._counts[code] = n
        if n <= MAX_FINDINGS_PER_CODE:
            self.result.findings.append(Finding(code, severity, message, seq))
        elif n == MAX_FINDINGS_PER_CODE + 1:
            self.result.findings.append(
                Finding(code, severity, f"further '{code}' findings omitted", None)
            )

    def verify(self, stream: BinaryIO) -> ReportResult:
        """Verify without keeping records (drains :meth:`records`)."""
        for _ in self.records(stream):
            pass
        return self.result

    def records(self, stream: BinaryIO) -> Iterator[tuple[Record, bool]]:
        """Yield ``(record, already_acknowledged)`` for every authentic record, in file order."""
        src = _Hashing(stream)
        try:
            header = self._read_header(src)
        except _Truncated as t:
            self._find(F.REPORT_TRUNCATED, "critical", f"report ends inside its {t.what}")
            return
        except MeterboxError as exc:
            code = F.REPORT_UNKNOWN_VERSION if "version" in exc.problem else F.REPORT_MALFORMED
            self._find(code, "critical", exc.render())
            return
        if header is None:
            return
        frames_len = header["frames_len"]
        reader = FrameReader(src, limit=frames_len)  # type: ignore[arg-type]
        yield from self._frames(reader, header)
        if reader.consumed + reader.torn_bytes < frames_len:
            self._find(
                F.REPORT_TRUNCATED,
                "critical",
                f"report ends after {reader.consumed + reader.torn_bytes} of {frames_len} "
                "bytes of records",
            )
            self._finish_gaps()
            return
        if reader.torn_at is not None:
            self._find(
                F.RECORD_MALFORMED,
                "critical",
                f"the last record is cut off ({reader.torn_bytes} bytes at offset "
                f"{reader.torn_at})",
            )
        self._finish_gaps()
        try:
            self._read_trailer(src)
        except _Truncated as t:
            self._find(F.REPORT_TRUNCATED, "critical", f"report ends inside its {t.what}")
        except MeterboxError as exc:
            self._find(F.REPORT_MALFORMED, "critical", exc.render())
        self.result.digest = src.whole.digest()

    # ------------------------------------------------------------------ header
    def _read_header(self, src: _Hashing) -> dict[str, Any] | None:
        magic = src.read(4)
        if magic != REPORT_MAGIC:
            raise FormatError(
                "not a meterbox report",
                expected=f"a file starting with {REPORT_MAGIC!r}",
                found=repr(magic) if magic else "an empty file",
                hint="pass the report file written by 'meterbox server export'",
            )
        version = src.read_exact(1, "header")[0]
        if version != REPORT_VERSION:
            raise FormatError(
                "unknown report version",
                expected=f"version {REPORT_VERSION}",
                found=f"version {version}",
                hint="upgrade the vendor toolkit",
            )
        (length,) = _U32.unpack(src.read_exact(4, "header"))
        if length > MAX_HEADER_LEN:
            raise FormatError(
                "report header is too large",
                expected=f"at most {MAX_HEADER_LEN} bytes",
                found=f"{length} bytes",
            )
        header = _unpack_map(src.read_exact(length, "header"), "report header")
        if header.get("v") != version:
            raise FormatError(
                "report header version does not match the file version",
                expected=f"v = {version}",
                found=f"v = {header.get('v')!r}",
            )
        r = self.result
        try:
            r.instance_id = _bytes(header, "instance_id", INSTANCE_ID_LEN)
            r.instance_key = _bytes(header, "instance_key", 32)
            r.vendor_key_id = _bytes(header, "vendor_key_id", 8)
            r.created_ms = _int(header, "created_ms")
            r.base_seq = _int(header, "base_seq")
            base_hash = _bytes(header, "base_hash", HASH_LEN)
            _int(header, "frames_len")
            licenses = header.get("licenses", [])
            if not isinstance(licenses, list) or not all(isinstance(x, bytes) for x in licenses):
                raise FormatError(
                    "report licenses field", expected="a list of bytes", found="other"
                )
            r.licenses = licenses
            acked = header.get("acked")
            if acked is not None:
                r.acked_by_server = Head(int(acked[0]), bytes(acked[1]))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise FormatError(
                "report header is incomplete",
                expected="the fields listed in docs/spec/report.md",
                found=f"{type(exc).__name__}: {exc}",
            ) from None
        header["base_hash"] = base_hash
        if self._expect_instance is not None and r.instance_id != self._expect_instance:
            self._find(F.EPOCH_FOREIGN, "critical", "report comes from another server instance")
        if r.vendor_key_id not in self._vendor_keys:
            self._find(
                F.REPORT_WRONG_VENDOR_KEY,
                "critical",
                f"report is sealed to vendor key {r.vendor_key_id.hex()}, which this vendor "
                "does not hold",
            )
            return None
        known = self._known
        if (
            known
            and known.instance_key
            and not constant_time_equal(known.instance_key, r.instance_key)
        ):
            self._find(
                F.REPORT_INSTANCE_KEY_MISMATCH,
                "critical",
                "report is signed by a different instance key than earlier reports",
            )
        return header

    # ------------------------------------------------------------------ frames
    def _frames(self, reader: FrameReader, header: dict[str, Any]) -> Iterator[tuple[Record, bool]]:
        r = self.result
        known = self._known
        prev = header["base_hash"]
        expected = r.base_seq
        self._missing: OrderedDict[int, None] = OrderedDict()
        last_seq, last_data = -1, b""
        cur_epoch: int | None = None
        cur_chain: bytes | None = None
        cur_key: AeadKey | None = None
        anchor = known.chain if known else None
        if known is not None:
            if r.base_seq > known.head.seq + 1:
                self._find(
                    F.RECORD_MISSING,
                    "critical",
                    f"records {known.head.seq + 1}..{r.base_seq - 1} after the acknowledged "
                    "head are missing from the report",
                    known.head.seq + 1,
                )
            elif r.base_seq == known.head.seq + 1 and prev != known.head.hash:
                self._find(
                    F.LEDGER_FORK,
                    "critical",
                    "report does not continue from the acknowledged head",
                    known.head.seq,
                )
        elif r.base_seq != 0:
            self._find(
                F.LEDGER_UNANCHORED,
                "warning",
                f"first report of this instance starts at seq {r.base_seq}, not at genesis",
            )
        known_seq = known.head.seq if known is not None else -1
        progress = self._on_progress
        for raw in reader:
            before = prev
            h = chain(prev, raw.data)
            prev = h
            r.records += 1
            if progress is not None:
                progress(len(raw.data))
            try:
                hdr = parse_header(raw.body)
            except FormatError as exc:
                code = F.RECORD_UNKNOWN_VERSION if "version" in exc.problem else F.RECORD_MALFORMED
                self._find(code, "critical", f"at offset {raw.offset}: {exc.render()}")
                continue
            seq = hdr.seq
            # Sequence: gap-free, in order, once.
            if seq == expected:
                expected += 1
            elif seq > expected:
                if seq - expected > MAX_PENDING_GAPS:
                    # A jump this large is never a reordering: name the range at once
                    # instead of remembering every missing number.
                    self._find(
                        F.RECORD_MISSING,
                        "critical",
                        f"records {expected}..{seq - 1} are missing",
                        expected,
                    )
                else:
                    for s in range(expected, seq):
                        self._missing[s] = None
                    while len(self._missing) > MAX_PENDING_GAPS:
                        gone, _ = self._missing.popitem(last=False)
                        self._find(F.RECORD_MISSING, "critical", f"record {gone} is missing", gone)
                expected = seq + 1
            elif seq in self._missing:
                del self._missing[seq]
                self._find(F.RECORD_OUT_OF_ORDER, "critical", f"record {seq} is out of order", seq)
            else:
                dup = seq == last_seq and raw.data == last_data
                self._find(
                    F.RECORD_DUPLICATE,
                    "critical",
                    f"record {seq} appears twice" + ("" if dup else " with different contents"),
                    seq,
                )
            last_seq, last_data = seq, raw.data
            if seq == known_seq and known is not None and h != known.head.hash:
                self._find(
                    F.LEDGER_FORK,
                    "critical",
                    f"record {seq} differs from the one the vendor acknowledged: the ledger "
                    "was forked or restored from a backup",
                    seq,
                )
            if hdr.type == RecordType.EPOCH:
                opened = self._open_epoch(raw.body, hdr, cur_epoch, cur_chain, anchor)
                if opened is None:
                    cur_epoch, cur_chain, cur_key = hdr.epoch, None, None
                else:
                    cur_epoch, cur_chain, cur_key = hdr.epoch, opened[0], opened[1]
                    r.chain = ChainState(hdr.epoch, opened[0])
                continue
            if cur_key is None or hdr.epoch != cur_epoch:
                if cur_epoch is None or hdr.epoch != cur_epoch:
                    self._find(
                        F.EPOCH_MISSING,
                        "critical",
                        f"record {seq} belongs to epoch {hdr.epoch}, which has no valid EPOCH "
                        "record before it",
                        seq,
                    )
                continue
            try:
                record = open_record(raw.body, hdr, cur_key)
            except VerificationError:
                self._find(
                    F.RECORD_UNAUTHENTIC,
                    "critical",
                    f"record {seq} fails authentication: it was modified, forged, or comes "
                    "from another ledger",
                    seq,
                )
                continue
            except FormatError as exc:
                self._find(F.RECORD_MALFORMED, "critical", f"record {seq}: {exc.render()}", seq)
                continue
            if record.type in _CHECKED_TYPES:
                self._check_record(record, before)
            yield record, seq <= known_seq
        r.head = Head(last_seq, prev) if last_seq >= 0 else None
        if known is not None and last_seq < known.head.seq:
            self._find(
                F.LEDGER_ROLLBACK,
                "critical",
                f"report ends at seq {last_seq}, before the acknowledged head {known.head.seq}: "
                "the ledger was rolled back (for example restored from a backup)",
                last_seq,
            )

    def _check_record(self, record: Record, before: bytes) -> None:
        p = record.payload
        if record.type == RecordType.GENESIS:
            ik = p.get("ik")
            if not isinstance(ik, bytes) or not constant_time_equal(ik, self.result.instance_key):
                self._find(
                    F.REPORT_INSTANCE_KEY_MISMATCH,
                    "critical",
                    "the genesis record names a different instance key than the report",
                    record.seq,
                )
        elif record.type == RecordType.CHECKPOINT:
            if p.get("s") != record.seq - 1 or p.get("h") != before or p.get("e") != record.epoch:
                self._find(
                    F.LEDGER_CHECKPOINT_MISMATCH,
                    "critical",
                    f"checkpoint {record.seq} does not commit to the chain before it",
                    record.seq,
                )
        elif record.type == RecordType.RECOVERY:
            self._find(
                F.LEDGER_RECOVERED,
                "warning",
                f"the server cut {p.get('n')} bytes of torn tail after record {p.get('s')} "
                "on restart (unacknowledged records lost in a crash)",
                record.seq,
            )

    def _open_epoch(
        self,
        body: bytes,
        hdr: Any,
        cur_epoch: int | None,
        cur_chain: bytes | None,
        anchor: ChainState | None,
    ) -> tuple[bytes, AeadKey] | None:
        r = self.result
        try:
            ep = parse_epoch(body, hdr)
        except FormatError as exc:
            self._find(F.RECORD_MALFORMED, "critical", f"epoch record {hdr.seq}: {exc.render()}")
            return None
        key = self._vendor_keys.get(ep.plain.vendor_key_id)
        if key is None:
            self._find(
                F.REPORT_WRONG_VENDOR_KEY,
                "critical",
                f"epoch {hdr.epoch} is sealed to vendor key {ep.plain.vendor_key_id.hex()}",
                hdr.seq,
            )
            return None
        try:
            chain_key = open_chain_key(key, ep.sealed, ep.bound)
        except VerificationError:
            self._find(
                F.EPOCH_UNOPENABLE,
                "critical",
                f"epoch record {hdr.seq} does not open with the vendor key: modified or "
                "sealed to another key",
                hdr.seq,
            )
            return None
        if not constant_time_equal(ep.plain.instance_id, r.instance_id):
            self._find(
                F.EPOCH_FOREIGN,
                "critical",
                f"epoch record {hdr.seq} belongs to instance {ep.plain.instance_id.hex()}: "
                "records were spliced in from another ledger",
                hdr.seq,
            )
            return None
        expected_key: bytes | None = None
        try:
            if cur_chain is not None and cur_epoch is not None:
                if hdr.epoch != cur_epoch + 1:
                    self._find(
                        F.EPOCH_GAP,
                        "critical",
                        f"epoch {hdr.epoch} follows epoch {cur_epoch}",
                        hdr.seq,
                    )
                expected_key = ratchet(cur_chain, hdr.epoch - cur_epoch)
            elif anchor is not None:
                if hdr.epoch >= anchor.epoch:
                    expected_key = ratchet(anchor.key, hdr.epoch - anchor.epoch)
                elif not constant_time_equal(
                    ratchet(chain_key, anchor.epoch - hdr.epoch), anchor.key
                ):
                    # An epoch the vendor already acknowledged, resent before compaction:
                    # it must ratchet forward into the key the vendor holds.
                    expected_key = b""
        except FormatError:
            expected_key = b""
        if expected_key is not None and not constant_time_equal(expected_key, chain_key):
            self._find(
                F.EPOCH_FORGED,
                "critical",
                f"epoch {hdr.epoch} (record {hdr.seq}) was not derived from the ledger's "
                "chain key: forged, for example with only the vendor's public key",
                hdr.seq,
            )
            return None
        return chain_key, record_key(chain_key, ep.plain.salt)

    def _finish_gaps(self) -> None:
        for seq in list(getattr(self, "_missing", {})):
            self._find(F.RECORD_MISSING, "critical", f"record {seq} is missing", seq)
        self._missing = OrderedDict()

    # ----------------------------------------------------------------- trailer
    def _read_trailer(self, src: _Hashing) -> None:
        r = self.result
        magic = src.read_exact(4, "trailer")
        if magic != TRAILER_MAGIC:
            raise FormatError(
                "report trailer is missing", expected=repr(TRAILER_MAGIC), found=repr(magic)
            )
        (length,) = _U32.unpack(src.read_exact(4, "trailer"))
        if length > MAX_TRAILER_LEN:
            raise FormatError("report trailer is too large", expected="< 64 KiB", found=str(length))
        trailer = _unpack_map(src.read_exact(length, "trailer"), "report trailer")
        src.hash_for_sig = False
        signature = src.read_exact(SIGNATURE_LEN, "signature")
        if src.read(1):
            raise FormatError(
                "report has bytes after its signature", expected="end of file", found="more data"
            )
        try:
            claimed = Head(_int(trailer, "head_seq"), _bytes(trailer, "head_hash", HASH_LEN))
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(
                "report trailer is incomplete", expected="head_seq, head_hash", found=str(exc)
            ) from None
        r.claimed_head = claimed
        try:
            verify_signature(
                ed25519_public_from_raw(r.instance_key),
                signature,
                SIGNATURE_DOMAIN + src.sig_hash.digest(),
            )
        except (VerificationError, FormatError):
            self._find(
                F.REPORT_SIGNATURE_INVALID,
                "critical",
                "the report's signature does not verify: the file was changed after export",
            )
        head = r.head
        if head is None or head.seq < claimed.seq:
            self._find(
                F.LEDGER_TRUNCATED,
                "critical",
                f"the report claims records up to seq {claimed.seq} but holds records only up to "
                f"{head.seq if head else 'none'}",
                head.seq if head else None,
            )
        elif head.seq == claimed.seq and not constant_time_equal(head.hash, claimed.hash):
            self._find(
                F.LEDGER_HEAD_MISMATCH,
                "critical",
                "the chain hash of the records differs from the head the report claims",
                head.seq,
            )
        elif head.seq > claimed.seq:
            self._find(
                F.LEDGER_HEAD_MISMATCH,
                "critical",
                f"the report holds records beyond its claimed head {claimed.seq}",
                claimed.seq,
            )


def _unpack_map(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise FormatError(
            f"{what} is not valid msgpack", expected="a msgpack map", found=type(exc).__name__
        ) from None
    if not isinstance(value, dict):
        raise FormatError(
            f"{what} is not a map", expected="a msgpack map", found=type(value).__name__
        )
    return value


def _bytes(m: Mapping[str, Any], key: str, length: int) -> bytes:
    value = m[key]
    if not isinstance(value, bytes) or len(value) != length:
        raise ValueError(f"{key} must be {length} bytes")
    return value


def _int(m: Mapping[str, Any], key: str) -> int:
    value = m[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{key} must be a non-negative integer")
    return value


def report_digest(data: bytes) -> bytes:
    return sha256(data)
