"""Streaming verification of a report (docs/spec/report.md "Verify", ledger.md "Verify").

:class:`ReportVerifier` has one method per step of the specification, called in
order by the caller or by :meth:`ReportVerifier.records`:

1. :meth:`~ReportVerifier.read_header` -- the container header (report.md steps 1-2),
   returned as a typed :class:`ReportHeader`;
2. :meth:`~ReportVerifier.records` -- the frames (ledger.md steps 1-10), yielded as
   they are verified, then the trailer, the signature and the claimed head
   (report.md steps 3-7);
3. :attr:`~ReportVerifier.result` -- everything found.

Verification streams: memory stays bounded whatever the report's length (one
frame, one chain hash, one epoch key, and at most ``MAX_PENDING_GAPS`` pending
sequence gaps at a time). Findings, their messages and their order are part of the
vendor's output: the steps below keep them exactly as the specification lists them.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Final

import msgpack
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meterbox.crypto import (
    HASH_LEN,
    AeadKey,
    constant_time_equal,
    ed25519_public_from_raw,
    verify_signature,
)
from meterbox.errors import FormatError, MeterboxError, UnknownVersionError, VerificationError
from meterbox.ledger import _findings as F
from meterbox.ledger._findings import Finding
from meterbox.ledger._format import (
    BATCHED_VERSIONS,
    FLAG_CLOSES_BATCH,
    INSTANCE_ID_LEN,
    VERSION,
    Header,
    RecordType,
    chain,
)
from meterbox.ledger._frames import (
    FrameReader,
    RawFrame,
    Record,
    open_record,
    parse_epoch,
    unsealed_epoch_frame,
    unsealed_frame,
)
from meterbox.ledger._frames import parse_header as parse_record_header
from meterbox.ledger._keys import (
    MAX_BATCH_STEPS,
    batch_root,
    batch_seal,
    epoch_seal,
    next_batch_key,
    open_chain_key,
    ratchet,
    record_key,
)
from meterbox.ledger._report import (
    MAX_HEADER_LEN,
    MAX_TRAILER_LEN,
    REPORT_MAGIC,
    REPORT_VERSION,
    SIGNATURE_DOMAIN,
    SIGNATURE_LEN,
    TRAILER_MAGIC,
    U32,
)
from meterbox.ledger._seal import Head
from meterbox.ledger.records import Checkpoint, Genesis, LedgerShortened, Recovery, StateRebuilt

MAX_PENDING_GAPS: Final = 4096
#: Integers in a report header or trailer and record sequence numbers stay below
#: 2^63, so every one fits the signed 64-bit columns of the vendor's store.
MAX_INT: Final = (1 << 63) - 1
#: A report carries at most this many license files, each at most MAX_LICENSE_LEN bytes
#: (docs/spec/report.md, "Limits"): checked before any license is verified.
MAX_REPORT_LICENSES: Final = 256
MAX_LICENSE_LEN: Final = 64 << 10
#: Ratchet steps a report may make the verifier take beyond one per frame read so far
#: (ledger.md "Verify", step 6): each epoch after the known key has its own EPOCH
#: frame, so an honest report never needs more; a forged epoch number cannot buy more.
RATCHET_SLACK: Final = 64
#: Findings of one code beyond this many are summarised, so a damaged report
#: cannot flood the vendor's store.
MAX_FINDINGS_PER_CODE: Final = 50
#: Epoch failures after which no further EPOCH record of the report is opened.
_EPOCH_FAILURES: Final = (F.EPOCH_FORGED, F.EPOCH_UNOPENABLE, F.EPOCH_FOREIGN)
#: Record types the verifier inspects beyond authentication.
_CHECKED_TYPES: Final = frozenset(
    {
        RecordType.GENESIS,
        RecordType.CHECKPOINT,
        RecordType.RECOVERY,
        RecordType.LEDGER_SHORTENED,
        RecordType.STATE_REBUILT,
    }
)


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


@dataclass(frozen=True, slots=True)
class ReportHeader:
    """The report's container header (report.md, "Header fields"), validated."""

    version: int
    instance_id: bytes
    instance_key: bytes
    vendor_key_id: bytes
    created_ms: int
    base_seq: int
    base_hash: bytes
    frames_len: int
    #: The head of the last receipt the server imported, if any.
    acked: Head | None
    #: The license files installed on the server, as bytes.
    licenses: tuple[bytes, ...]
    #: Informative: producer and version, as the server wrote it.
    software: str | None
    #: Informative: the server's extra map.
    extra: Mapping[str, Any]


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
        self.stream = stream
        self.sig_hash = hashlib.sha256()
        self.whole = hashlib.sha256()
        self.hash_for_sig = True

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n)
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


@dataclass(slots=True)
class _Walk:
    """The frame walk's running state (ledger.md "Verify"): one frame's worth of memory."""

    prev: bytes
    expected: int
    anchor: ChainState | None
    known_seq: int
    missing: OrderedDict[int, None] = field(default_factory=OrderedDict)
    last_seq: int = -1
    last_data: bytes = b""
    cur_epoch: int | None = None
    cur_chain: bytes | None = None
    cur_key: AeadKey | None = None
    #: The record version of the current epoch (its EPOCH record's).
    cur_version: int = 0
    #: Version 2 and 3 epochs: the batch the next record belongs to, and its key.
    next_batch: int = 0
    batch_key: bytes | None = None
    #: A record of ``next_batch`` was seen, and no seal has closed it yet.
    batch_open: bool = False
    #: Seq of the last frame of the current epoch (a batch check needs contiguity).
    last_epoch_seq: int = -1
    #: A frame went missing, came twice or out of order: the chain the seals cover differs.
    chain_broken: bool = False


class ReportVerifier:
    """Streaming verification of one report, step by step.

    ``vendor_keys`` maps vendor key ids to the X25519 private keys that open epochs.
    ``known`` is what the vendor acknowledged for this instance before, if anything; it
    may also be set after :meth:`read_header` (once the caller knows whose report it
    is) and before :meth:`records`.
    """

    def __init__(
        self,
        vendor_keys: Mapping[bytes, X25519PrivateKey],
        *,
        known: Known | None = None,
        expect_instance: bytes | None = None,
        on_progress: Callable[[int], None] | None = None,
        max_header_len: int = MAX_HEADER_LEN,
    ) -> None:
        self._vendor_keys = dict(vendor_keys)
        self._max_header_len = min(max_header_len, MAX_HEADER_LEN)
        self.known = known
        self._expect_instance = expect_instance
        self._on_progress = on_progress
        self.result = ReportResult()
        self.header: ReportHeader | None = None
        self._src: _Hashing | None = None
        self._openable = False
        self._counts: dict[str, int] = {}
        self._criticals = 0
        self._walk: _Walk | None = None
        #: Ratchet steps taken so far: bounded by the frames read (RATCHET_SLACK).
        self._ratchet_steps = 0
        self._header_end = 0
        self._identity_checked = False

    def _find(self, code: str, severity: F.Severity, message: str, seq: int | None = None) -> None:
        n = self._counts.get(code, 0) + 1
        self._counts[code] = n
        if severity == "critical":
            self._criticals += 1
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

    # ------------------------------------------------------- step 1: header
    def read_header(self, stream: BinaryIO) -> ReportHeader | None:
        """Read and check the container header (report.md steps 1 and 2).

        Returns the header, or ``None`` when it cannot be read (the finding is in
        :attr:`result`). A header sealed to a vendor key this vendor does not hold is
        returned, but :meth:`records` then yields nothing: no epoch can be opened.
        """
        if self._src is not None:
            raise RuntimeError("read_header() is called once per verifier")
        src = self._src = _Hashing(stream)
        try:
            header = self._parse_header(src)
        except _Truncated as t:
            self._find(F.REPORT_TRUNCATED, "critical", f"report ends inside its {t.what}")
            return None
        except UnknownVersionError as exc:
            self._find(F.REPORT_UNKNOWN_VERSION, "critical", exc.render())
            return None
        except MeterboxError as exc:
            self._find(F.REPORT_MALFORMED, "critical", exc.render())
            return None
        self.header = header
        r = self.result
        if self._expect_instance is not None and r.instance_id != self._expect_instance:
            self._find(F.EPOCH_FOREIGN, "critical", "report comes from another server instance")
        if r.vendor_key_id not in self._vendor_keys:
            self._find(
                F.REPORT_WRONG_VENDOR_KEY,
                "critical",
                f"report is sealed to vendor key {r.vendor_key_id.hex()}, which this vendor "
                "does not hold",
            )
        else:
            self._openable = True
        return header

    def _parse_header(self, src: _Hashing) -> ReportHeader:
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
            raise UnknownVersionError(
                "unknown report version",
                expected=f"version {REPORT_VERSION}",
                found=f"version {version}",
                hint="upgrade the vendor toolkit",
            )
        (length,) = U32.unpack(src.read_exact(4, "header"))
        if length > self._max_header_len:
            raise FormatError(
                "report header is too large",
                expected=f"at most {self._max_header_len} bytes",
                found=f"{length} bytes",
            )
        header = _unpack_map(src.read_exact(length, "header"), "report header")
        self._header_end = 9 + length
        if header.get("v") != version:
            raise UnknownVersionError(
                "report header version does not match the file version",
                expected=f"v = {version}",
                found=f"v = {header.get('v')!r}",
            )
        try:
            return self._header_fields(version, header)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise FormatError(
                "report header is incomplete",
                expected="the fields listed in docs/spec/report.md",
                found=f"{type(exc).__name__}: {exc}",
            ) from None

    def _header_fields(self, version: int, header: dict[str, Any]) -> ReportHeader:
        # The result is filled field by field, in this order, so a header that fails
        # half-way still names what it could (the instance id above all).
        r = self.result
        r.instance_id = _bytes(header, "instance_id", INSTANCE_ID_LEN)
        r.instance_key = _bytes(header, "instance_key", 32)
        r.vendor_key_id = _bytes(header, "vendor_key_id", 8)
        r.created_ms = _int(header, "created_ms")
        r.base_seq = _int(header, "base_seq")
        base_hash = _bytes(header, "base_hash", HASH_LEN)
        frames_len = _int(header, "frames_len")
        licenses = _licenses(header.get("licenses", []))
        r.licenses = licenses
        acked = header.get("acked")
        if acked is not None:
            r.acked_by_server = _acked(acked)
        software = header.get("software")
        extra = header.get("extra")
        return ReportHeader(
            version=version,
            instance_id=r.instance_id,
            instance_key=r.instance_key,
            vendor_key_id=r.vendor_key_id,
            created_ms=r.created_ms,
            base_seq=r.base_seq,
            base_hash=base_hash,
            frames_len=frames_len,
            acked=r.acked_by_server,
            licenses=tuple(licenses),
            software=software if isinstance(software, str) else None,
            extra=extra if isinstance(extra, dict) else {},
        )

    # ------------------------------------------------------ step 2: records
    def records(self, stream: BinaryIO | None = None) -> Iterator[tuple[Record, bool]]:
        """Yield ``(record, already_acknowledged)`` for every authentic record, in file order.

        Reads the header first unless :meth:`read_header` already did; after the last
        record it checks the trailer, the signature and the claimed head.
        """
        if self._src is None:
            if stream is None:
                raise RuntimeError("records() needs the report stream, or read_header() first")
            self.read_header(stream)
        elif stream is not None and stream is not self._src.stream:
            raise RuntimeError("records() must read the stream read_header() began")
        header, src = self.header, self._src
        if header is None or src is None or not self._openable:
            return
        if not self._identity_checked:
            self._check_instance_key()
        reader = FrameReader(src, limit=header.frames_len)  # type: ignore[arg-type]
        yield from self._frames(reader, header)
        if not self._frames_complete(reader, header.frames_len):
            return
        try:
            self._read_trailer(src)
        except _Truncated as t:
            self._find(F.REPORT_TRUNCATED, "critical", f"report ends inside its {t.what}")
        except MeterboxError as exc:
            self._find(F.REPORT_MALFORMED, "critical", exc.render())
        self.result.digest = src.whole.digest()

    # ---------------------------------------- step 1b: signature before content
    def check_signature(self, stream: BinaryIO, size: int) -> bool:
        """Check the report's layout, signature and signer before anything else is read.

        Report.md "Verify" step 2a, for a file the caller can read twice: ``stream`` is a
        second handle on the report at offset 0 and ``size`` its length. The trailer's
        place follows from the header alone, so this reads 8 bytes there and hashes
        the rest: no record, license or trailer field is parsed before the instance key
        named in the header (and, when the vendor knows this instance, the key it
        acknowledged before) has signed every byte. Findings are the ones the
        streaming steps give for the same damage; returns whether the report passed.
        """
        header = self.header
        if header is None or self._src is None:
            raise RuntimeError("check_signature() follows a successful read_header()")
        n = len(self.result.findings)
        try:
            self._check_layout_and_signature(stream, size, header.frames_len)
        except _Truncated as t:
            self._find(F.REPORT_TRUNCATED, "critical", f"report ends inside its {t.what}")
        except MeterboxError as exc:
            self._find(F.REPORT_MALFORMED, "critical", exc.render())
        self._check_instance_key()
        self._identity_checked = True
        return len(self.result.findings) == n

    def _check_layout_and_signature(self, stream: BinaryIO, size: int, frames_len: int) -> None:
        trailer_at = self._header_end + frames_len
        if size < trailer_at + 8 + SIGNATURE_LEN:
            raise _Truncated(f"records ({size} bytes, the header announces {trailer_at} and more)")
        stream.seek(trailer_at)
        head = stream.read(8)
        if head[:4] != TRAILER_MAGIC:
            raise FormatError(
                "report trailer is missing", expected=repr(TRAILER_MAGIC), found=repr(head[:4])
            )
        (length,) = U32.unpack(head[4:])
        if length > MAX_TRAILER_LEN:
            raise FormatError("report trailer is too large", expected="< 64 KiB", found=str(length))
        end = trailer_at + 8 + length + SIGNATURE_LEN
        if size < end:
            raise _Truncated("trailer")
        if size > end:
            raise FormatError(
                "report has bytes after its signature", expected="end of file", found="more data"
            )
        stream.seek(0)
        digest = hashlib.sha256()
        left = size - SIGNATURE_LEN
        while left > 0:
            chunk = stream.read(min(left, 1 << 20))
            if not chunk:
                raise _Truncated("records")
            digest.update(chunk)
            left -= len(chunk)
        signature = stream.read(SIGNATURE_LEN)
        try:
            verify_signature(
                ed25519_public_from_raw(self.result.instance_key),
                signature,
                SIGNATURE_DOMAIN + digest.digest(),
            )
        except (VerificationError, FormatError):
            self._find(
                F.REPORT_SIGNATURE_INVALID,
                "critical",
                "the report's signature does not verify: the file was changed after export",
            )

    def _check_instance_key(self) -> None:
        known = self.known
        if (
            known
            and known.instance_key
            and not constant_time_equal(known.instance_key, self.result.instance_key)
        ):
            self._find(
                F.REPORT_INSTANCE_KEY_MISMATCH,
                "critical",
                "report is signed by a different instance key than earlier reports",
            )

    def _frames_complete(self, reader: FrameReader, frames_len: int) -> bool:
        """Report.md step 3's end: the frames' bytes all there, the last one whole."""
        if reader.consumed + reader.torn_bytes < frames_len:
            self._find(
                F.REPORT_TRUNCATED,
                "critical",
                f"report ends after {reader.consumed + reader.torn_bytes} of {frames_len} "
                "bytes of records",
            )
            self._finish_gaps()
            return False
        if reader.torn_at is not None:
            self._find(
                F.RECORD_MALFORMED,
                "critical",
                f"the last record is cut off ({reader.torn_bytes} bytes at offset "
                f"{reader.torn_at})",
            )
        self._finish_gaps()
        return True

    @property
    def chain_hash(self) -> bytes | None:
        """The chain hash through the frame last read: while :meth:`records` yields a
        record, the hash ``h_seq`` of that very record (what a witness names)."""
        return self._walk.prev if self._walk is not None else None

    # ---------------------------------------------------------------- frames
    def _frames(self, reader: FrameReader, header: ReportHeader) -> Iterator[tuple[Record, bool]]:
        known = self.known
        walk = self._walk = _Walk(
            prev=header.base_hash,
            expected=header.base_seq,
            anchor=known.chain if known else None,
            known_seq=known.head.seq if known is not None else -1,
        )
        self._check_anchor(header)
        progress = self._on_progress
        for raw in reader:
            before = walk.prev
            walk.prev = chain(walk.prev, raw.data)
            self.result.records += 1
            if progress is not None:
                progress(len(raw.data))
            record = self._frame(walk, raw, before)
            if record is not None:
                yield record, record.seq <= walk.known_seq
        self._check_end(walk)

    def _check_anchor(self, header: ReportHeader) -> None:
        """Ledger.md Verify step 1: does the report start where the vendor left off?"""
        known = self.known
        if known is not None:
            if header.base_seq > known.head.seq + 1:
                self._find(
                    F.RECORD_MISSING,
                    "critical",
                    f"records {known.head.seq + 1}..{header.base_seq - 1} after the "
                    "acknowledged head are missing from the report",
                    known.head.seq + 1,
                )
            elif header.base_seq == known.head.seq + 1 and header.base_hash != known.head.hash:
                self._find(
                    F.LEDGER_FORK,
                    "critical",
                    "report does not continue from the acknowledged head",
                    known.head.seq,
                )
        elif header.base_seq != 0:
            self._find(
                F.LEDGER_UNANCHORED,
                "warning",
                f"first report of this instance starts at seq {header.base_seq}, not at genesis",
            )

    def _frame(self, walk: _Walk, raw: RawFrame, before: bytes) -> Record | None:
        """Ledger.md Verify steps 3-8 for one frame whose chain hash is already taken."""
        try:
            hdr = parse_record_header(raw.body)
            if hdr.seq > MAX_INT:
                raise FormatError(
                    "ledger record sequence number out of range",
                    expected=f"at most {MAX_INT}",
                    found=str(hdr.seq),
                )
        except UnknownVersionError as exc:
            self._find(
                F.RECORD_UNKNOWN_VERSION, "critical", f"at offset {raw.offset}: {exc.render()}"
            )
            return None
        except FormatError as exc:
            self._find(F.RECORD_MALFORMED, "critical", f"at offset {raw.offset}: {exc.render()}")
            return None
        self._check_sequence(walk, hdr.seq, raw.data)
        self._check_acked_head(walk, hdr.seq)
        if hdr.type == RecordType.EPOCH:
            self._epoch(walk, raw, hdr, before)
            return None
        record = self._open(walk, raw.body, hdr)
        if walk.cur_version in BATCHED_VERSIONS and hdr.epoch == walk.cur_epoch:
            self._check_batch(walk, raw, hdr, before)
        if record is not None and record.type in _CHECKED_TYPES:
            self._check_record(record, before)
        return record

    def _check_batch(self, walk: _Walk, raw: RawFrame, hdr: Header, before: bytes) -> None:
        """Ledger.md Verify step 7a: batches of a version 2 or 3 epoch, in order, each sealed."""
        contiguous = hdr.seq == walk.last_epoch_seq + 1
        walk.last_epoch_seq = hdr.seq
        if walk.batch_key is None:
            return
        if hdr.batch != walk.next_batch:
            if contiguous:
                self._find(
                    F.BATCH_FORGED,
                    "critical",
                    f"record {hdr.seq} is in batch {hdr.batch} of epoch {hdr.epoch}, where "
                    f"batch {walk.next_batch} "
                    + ("continues" if walk.batch_open else "begins")
                    + ": batches were merged, split or renumbered",
                    hdr.seq,
                )
            steps = hdr.batch - walk.next_batch
            if not 0 < steps <= MAX_BATCH_STEPS:
                walk.batch_key = None  # nothing further in this epoch can be checked
                return
            walk.batch_key = next_batch_key(walk.batch_key, steps)
            walk.next_batch = hdr.batch
        walk.batch_open = True
        if not hdr.flags & FLAG_CLOSES_BATCH:
            return
        covered, tag = unsealed_frame(raw.data)
        # A seal covers the chain through every earlier frame. Once a frame went missing
        # or a critical finding was made, the bytes received differ from what was
        # sealed, and every later seal would fail too: the first finding names the
        # damage, so later seals are not checked (the report is rejected either way).
        checkable = self._criticals == 0 and not walk.chain_broken
        if checkable and not constant_time_equal(batch_seal(walk.batch_key, before, covered), tag):
            self._find(
                F.BATCH_FORGED,
                "critical",
                f"batch {hdr.batch} of epoch {hdr.epoch} (ending at record {hdr.seq}) fails "
                "its seal: its records were changed or sealed again by someone without "
                "that batch's key",
                hdr.seq,
            )
        walk.next_batch += 1
        walk.batch_key = next_batch_key(walk.batch_key)
        walk.batch_open = False

    def _unsealed_batch(self, walk: _Walk, next_seq: int | None) -> None:
        """A version 2 or 3 epoch ends (a new EPOCH, or the report's end) inside a batch."""
        contiguous = next_seq is None or next_seq == walk.last_epoch_seq + 1
        if walk.batch_open and walk.batch_key is not None and contiguous:
            self._find(
                F.BATCH_FORGED,
                "critical",
                f"batch {walk.next_batch} of epoch {walk.cur_epoch} ends at record "
                f"{walk.last_epoch_seq} without its seal",
                walk.last_epoch_seq,
            )
        walk.batch_open = False

    def _check_sequence(self, walk: _Walk, seq: int, data: bytes) -> None:
        """Ledger.md Verify step 4: gap-free, in order, once."""
        if seq != walk.expected:
            walk.chain_broken = True
        if seq == walk.expected:
            walk.expected += 1
        elif seq > walk.expected:
            self._gap(walk, seq)
            walk.expected = seq + 1
        elif seq in walk.missing:
            del walk.missing[seq]
            self._find(F.RECORD_OUT_OF_ORDER, "critical", f"record {seq} is out of order", seq)
        else:
            dup = seq == walk.last_seq and data == walk.last_data
            self._find(
                F.RECORD_DUPLICATE,
                "critical",
                f"record {seq} appears twice" + ("" if dup else " with different contents"),
                seq,
            )
        walk.last_seq, walk.last_data = seq, data

    def _gap(self, walk: _Walk, seq: int) -> None:
        if seq - walk.expected > MAX_PENDING_GAPS:
            # A jump this large is never a reordering: name the range at once
            # instead of remembering every missing number.
            self._find(
                F.RECORD_MISSING,
                "critical",
                f"records {walk.expected}..{seq - 1} are missing",
                walk.expected,
            )
            return
        for s in range(walk.expected, seq):
            walk.missing[s] = None
        while len(walk.missing) > MAX_PENDING_GAPS:
            gone, _ = walk.missing.popitem(last=False)
            self._find(F.RECORD_MISSING, "critical", f"record {gone} is missing", gone)

    def _check_acked_head(self, walk: _Walk, seq: int) -> None:
        """Ledger.md Verify step 5: the acknowledged record must be the very same."""
        known = self.known
        if seq == walk.known_seq and known is not None and walk.prev != known.head.hash:
            self._find(
                F.LEDGER_FORK,
                "critical",
                f"record {seq} differs from the one the vendor acknowledged: the ledger "
                "was forked or restored from a backup",
                seq,
            )

    def _epoch(self, walk: _Walk, raw: RawFrame, hdr: Header, before: bytes) -> None:
        """Ledger.md Verify step 6: an EPOCH record opens its epoch, or nothing."""
        if walk.cur_version in BATCHED_VERSIONS:
            self._unsealed_batch(walk, hdr.seq)
        failed = sum(self._counts.get(c, 0) for c in _EPOCH_FAILURES)
        if failed >= MAX_FINDINGS_PER_CODE:
            # The report is rejected already; opening more epochs would only spend an
            # HPKE operation per forged record. The work per byte stays bounded.
            self._find(
                F.EPOCH_FORGED,
                "critical",
                f"epoch record {hdr.seq} was not opened: {failed} epochs of this report "
                "already failed",
                hdr.seq,
            )
            walk.cur_epoch, walk.cur_chain, walk.cur_key = hdr.epoch, None, None
            walk.cur_version = hdr.version
            walk.next_batch, walk.batch_key, walk.batch_open = 0, None, False
            walk.last_epoch_seq = hdr.seq
            return
        # Like a batch seal, the epoch seal covers the chain before it: checked only
        # while that chain is the one received whole (see _check_batch).
        prev = before if self._criticals == 0 and not walk.chain_broken else None
        opened = self._open_epoch(raw, hdr, walk.cur_epoch, walk.cur_chain, walk.anchor, prev)
        walk.cur_epoch = hdr.epoch
        walk.cur_version = hdr.version
        walk.next_batch, walk.batch_key, walk.batch_open = 0, None, False
        walk.last_epoch_seq = hdr.seq
        if opened is None:
            walk.cur_chain, walk.cur_key = None, None
        else:
            walk.cur_chain, walk.cur_key, salt = opened
            if hdr.version in BATCHED_VERSIONS:
                walk.batch_key = batch_root(walk.cur_chain, salt)
            self.result.chain = ChainState(hdr.epoch, walk.cur_chain)

    def _open(self, walk: _Walk, body: bytes, hdr: Header) -> Record | None:
        """Ledger.md Verify step 7: open a record with its epoch's key."""
        seq = hdr.seq
        if walk.cur_key is None or hdr.epoch != walk.cur_epoch:
            if walk.cur_epoch is None or hdr.epoch != walk.cur_epoch:
                self._find(
                    F.EPOCH_MISSING,
                    "critical",
                    f"record {seq} belongs to epoch {hdr.epoch}, which has no valid EPOCH "
                    "record before it",
                    seq,
                )
            return None
        if hdr.version != walk.cur_version:
            # Every record of an epoch has its EPOCH record's version: a version 1 record
            # in a version 2 epoch would escape the batch seals.
            self._find(
                F.RECORD_UNAUTHENTIC,
                "critical",
                f"record {seq} has version {hdr.version} in an epoch of version {walk.cur_version}",
                seq,
            )
            return None
        try:
            return open_record(body, hdr, walk.cur_key)
        except VerificationError:
            self._find(
                F.RECORD_UNAUTHENTIC,
                "critical",
                f"record {seq} fails authentication: it was modified, forged, or comes "
                "from another ledger",
                seq,
            )
        except FormatError as exc:
            self._find(F.RECORD_MALFORMED, "critical", f"record {seq}: {exc.render()}", seq)
        return None

    def _check_end(self, walk: _Walk) -> None:
        """Ledger.md Verify step 10 (the head and rollback; gaps follow the frames)."""
        known = self.known
        last_seq = walk.last_seq
        if walk.cur_version in BATCHED_VERSIONS:
            self._unsealed_batch(walk, None)
        self.result.head = Head(last_seq, walk.prev) if last_seq >= 0 else None
        if known is not None and last_seq < known.head.seq:
            self._find(
                F.LEDGER_ROLLBACK,
                "critical",
                f"report ends at seq {last_seq}, before the acknowledged head {known.head.seq}: "
                "the ledger was rolled back (for example restored from a backup)",
                last_seq,
            )

    def _check_record(self, record: Record, before: bytes) -> None:
        """Ledger.md Verify step 8: the records the ledger itself writes."""
        p = record.payload
        if record.type == RecordType.GENESIS:
            try:
                ik: bytes | None = Genesis.from_map(p).instance_key
            except FormatError:
                ik = None
            if ik is None or not constant_time_equal(ik, self.result.instance_key):
                self._find(
                    F.REPORT_INSTANCE_KEY_MISMATCH,
                    "critical",
                    "the genesis record names a different instance key than the report",
                    record.seq,
                )
        elif record.type == RecordType.CHECKPOINT:
            try:
                cp: Checkpoint | None = Checkpoint.from_map(p)
            except FormatError:
                cp = None
            if (
                cp is None
                or cp.seq != record.seq - 1
                or cp.head_hash != before
                or cp.epoch != record.epoch
            ):
                self._find(
                    F.LEDGER_CHECKPOINT_MISMATCH,
                    "critical",
                    f"checkpoint {record.seq} does not commit to the chain before it",
                    record.seq,
                )
        elif record.type == RecordType.LEDGER_SHORTENED:
            self._shortened(record)
        elif record.type == RecordType.STATE_REBUILT:
            self._find(F.STATE_REBUILT, *state_rebuilt_finding(p), record.seq)
        elif record.type == RecordType.RECOVERY:
            lost: int | None = None
            try:
                rec = Recovery.from_map(p)
                cut, after = str(rec.cut_bytes), str(rec.last_good_seq)
                lost = rec.acked_lost
            except FormatError:
                # The finding stands whatever the payload says; name what it holds.
                cut, after = str(p.get("n")), str(p.get("s"))
            self._find(
                F.LEDGER_RECOVERED,
                "warning",
                f"the server cut {cut} bytes of torn tail after record {after} "
                "on restart (unacknowledged records lost in a crash)",
                record.seq,
            )
            if lost:
                self._find(
                    F.LEDGER_ACKNOWLEDGED_LOST,
                    "critical",
                    f"the server's restart cut {lost} records after {after} that it had "
                    "already acknowledged: usage it answered for is missing",
                    record.seq,
                )

    def _shortened(self, record: Record) -> None:
        try:
            sh: LedgerShortened | None = LedgerShortened.from_map(record.payload)
        except FormatError:
            sh = None
        if sh is not None and sh.reason == "key_behind":
            self._find(
                F.LEDGER_KEY_STATE_BEHIND,
                "critical",
                f"the server found its key state at record {sh.key_seq} (epoch "
                f"{sh.key_epoch}, batch {sh.key_batch}) behind its ledger, which went on "
                f"to {sh.ledger_seq}: a saved copy of chain.key was put back, so nothing "
                "vouches that the ledger after it was not cut",
                record.seq,
            )
            return
        what = (
            "the ledger differs"
            if sh is not None and sh.reason == "diverged"
            else "the ledger was shorter"
        )
        named = (
            f"its key state named record {sh.key_seq} (epoch {sh.key_epoch}, batch "
            f"{sh.key_batch}) but the ledger ended at {sh.ledger_seq}"
            if sh is not None
            else f"payload {record.payload!r}"
        )
        self._find(
            F.LEDGER_SHORTENED,
            "critical",
            f"{what} when the server opened it: {named}; committed records were removed",
            record.seq,
        )

    def _open_epoch(
        self,
        raw: RawFrame,
        hdr: Header,
        cur_epoch: int | None,
        cur_chain: bytes | None,
        anchor: ChainState | None,
        prev: bytes | None,
    ) -> tuple[bytes, AeadKey, bytes] | None:
        """Open the epoch's chain key; ``prev`` is the chain hash its seal covers, if
        the seal is to be checked (record version 3)."""
        r = self.result
        try:
            ep = parse_epoch(raw.body, hdr)
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
        expected_key = self._expected_chain_key(hdr, chain_key, cur_epoch, cur_chain, anchor)
        if expected_key is not None and not constant_time_equal(expected_key, chain_key):
            self._find(
                F.EPOCH_FORGED,
                "critical",
                f"epoch {hdr.epoch} (record {hdr.seq}) was not derived from the ledger's "
                "chain key: forged, for example with only the vendor's public key",
                hdr.seq,
            )
            return None
        # Last, so that a foreign or forged epoch is named as such: what is left to fail
        # here is the seal itself (an earlier change of the chain stops seal checks).
        if (
            hdr.version == VERSION
            and prev is not None
            and not constant_time_equal(
                epoch_seal(chain_key, ep.plain.salt, prev, unsealed_epoch_frame(raw.data)), ep.seal
            )
        ):
            self._find(
                F.EPOCH_UNOPENABLE,
                "critical",
                f"epoch record {hdr.seq} opens with the vendor key but fails its epoch seal: "
                "the seal was changed",
                hdr.seq,
            )
            return None
        return chain_key, record_key(chain_key, ep.plain.salt), ep.plain.salt

    def _expected_chain_key(
        self,
        hdr: Header,
        chain_key: bytes,
        cur_epoch: int | None,
        cur_chain: bytes | None,
        anchor: ChainState | None,
    ) -> bytes | None:
        """The key this epoch must have, ``b""`` if none can match, ``None`` if unconstrained."""
        try:
            if cur_chain is not None and cur_epoch is not None:
                if hdr.epoch != cur_epoch + 1:
                    self._find(
                        F.EPOCH_GAP,
                        "critical",
                        f"epoch {hdr.epoch} follows epoch {cur_epoch}",
                        hdr.seq,
                    )
                return self._ratchet(hdr, cur_chain, hdr.epoch - cur_epoch)
            if anchor is not None:
                if hdr.epoch >= anchor.epoch:
                    return self._ratchet(hdr, anchor.key, hdr.epoch - anchor.epoch)
                if not constant_time_equal(
                    self._ratchet(hdr, chain_key, anchor.epoch - hdr.epoch), anchor.key
                ):
                    # An epoch the vendor already acknowledged, resent before compaction:
                    # it must ratchet forward into the key the vendor holds.
                    return b""
        except FormatError:
            return b""
        return None

    def _ratchet(self, hdr: Header, key: bytes, steps: int) -> bytes:
        """Ratchet ``key`` forward, within the steps the frames read so far allow.

        Every epoch between a known key and this one has its own EPOCH frame in the
        report, so the distance an epoch may claim is bounded by the frames read; a
        claim beyond that is answered without deriving a single key.
        """
        allowed = self.result.records + RATCHET_SLACK - self._ratchet_steps
        if steps < 0 or steps > allowed:
            raise FormatError(
                f"epoch {hdr.epoch} (record {hdr.seq}) claims a ratchet distance the report "
                "cannot hold",
                expected=f"at most {max(allowed, 0)} epochs from the known chain key",
                found=f"{steps} epochs",
            )
        self._ratchet_steps += steps
        return ratchet(key, steps)

    def _finish_gaps(self) -> None:
        walk = self._walk
        if walk is None:
            return
        for seq in list(walk.missing):
            self._find(F.RECORD_MISSING, "critical", f"record {seq} is missing", seq)
        walk.missing = OrderedDict()

    # --------------------------------------------------------------- trailer
    def _read_trailer(self, src: _Hashing) -> None:
        """Report.md steps 4-6: trailer, signature, claimed head."""
        r = self.result
        magic = src.read_exact(4, "trailer")
        if magic != TRAILER_MAGIC:
            raise FormatError(
                "report trailer is missing", expected=repr(TRAILER_MAGIC), found=repr(magic)
            )
        (length,) = U32.unpack(src.read_exact(4, "trailer"))
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
        self._check_claimed_head(claimed)

    def _check_claimed_head(self, claimed: Head) -> None:
        head = self.result.head
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


def state_rebuilt_finding(payload: Mapping[str, Any]) -> tuple[F.Severity, str]:
    """Severity and message of a STATE_REBUILT record (docs/spec/ledger.md).

    Critical when the server found a cache claiming less than its ledger (less usage,
    fewer leases or activations, an unrecorded top-up or receipt): that is what an
    edit of the cache aims at, even though the server served from the ledger after
    it. A record this verifier cannot read is critical too: the server writes none.
    """
    try:
        rec = StateRebuilt.from_map(payload)
    except FormatError:
        return "critical", "the server rebuilt a cache file; the record naming it is unreadable"
    what = "; ".join(rec.items[:3]) + (" ..." if len(rec.items) > 3 else "")
    claim = "claimed less than the ledger holds" if rec.less else "did not match the ledger"
    return (
        "critical" if rec.less else "warning",
        f"at start the server found {rec.cache} {rec.reason}: it {claim} ({what}), "
        "and rebuilt it from the ledger",
    )


class _DuplicateKeyError(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """Build a map, refusing a key that appears twice (which of the two would count?)."""
    out: dict[Any, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKeyError(f"key {str(key)[:32]!r} appears twice")
        out[key] = value
    return out


def _unpack_map(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = msgpack.unpackb(
            data, raw=False, strict_map_key=True, object_pairs_hook=_no_duplicates
        )
    except _DuplicateKeyError as exc:
        raise FormatError(
            f"{what} has a duplicate key", expected="each key once", found=str(exc)
        ) from None
    except msgpack.StackError:
        raise FormatError(
            f"{what} is nested too deeply",
            expected="a msgpack map of plain values",
            found="values nested deeper than the decoder's stack limit",
        ) from None
    except (ValueError, msgpack.ExtraData, msgpack.FormatError) as exc:
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
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_INT:
        raise ValueError(f"{key} must be an integer from 0 to 2^63-1")
    return value


def _licenses(value: object) -> list[bytes]:
    """The header's license list, bounded before any license is looked at."""
    if not isinstance(value, list) or not all(isinstance(x, bytes) for x in value):
        raise FormatError("report licenses field", expected="a list of bytes", found="other")
    if len(value) > MAX_REPORT_LICENSES:
        raise FormatError(
            "report header lists too many licenses",
            expected=f"at most {MAX_REPORT_LICENSES}",
            found=f"{len(value)} licenses",
            hint="a server installs a handful of licenses; this report was not written by one",
        )
    longest = max((len(x) for x in value), default=0)
    if longest > MAX_LICENSE_LEN:
        raise FormatError(
            "report header carries an oversized license",
            expected=f"at most {MAX_LICENSE_LEN} bytes per license",
            found=f"{longest} bytes",
        )
    return value


def _acked(value: object) -> Head:
    """The header's ``acked`` head: ``[seq, hash]``, nothing larger."""
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or not isinstance(value[0], int)
        or isinstance(value[0], bool)
        or not 0 <= value[0] <= MAX_INT
        or not isinstance(value[1], bytes)
        or len(value[1]) != HASH_LEN
    ):
        raise FormatError(
            "report header field acked",
            expected=f"[seq from 0 to 2^63-1, {HASH_LEN}-byte hash] or nil",
            found=f"{type(value).__name__} {str(value)[:40]}",
        )
    return Head(value[0], value[1])
