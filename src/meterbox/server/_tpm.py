"""The server's TPM: set-up at ``server init --tpm auto|require|off``, and the running anchor.

At init:

:func:`prepare_tpm` probes the TPM (unless ``off``), decides with
:func:`meterbox.tpm.decide_mode`, and on a TPM creates (or adopts) the counter and the
attestation key with a fresh counter authValue. It writes nothing to the data directory:
:func:`write_tpm_config` stores the result in ``tpm.json`` (mode 0600: it holds the
counter's authValue) once the instance is being created, and :meth:`TpmSetup.genesis`
is what the ledger's genesis records. ``require`` without a TPM refuses before anything
is written.

While the server runs, :class:`TpmGuard` advances the counter and binds every value into
the ledger as a TPM_ANCHOR record, in the crash-safe order note ``pending`` ->
increment -> record durable -> note ``committed`` (``tpm-anchor.json``). At open it
judges the TPM against the note with the pure :func:`judge_open` and records any
disagreement as TPM_ROLLBACK, then keeps serving; :func:`require_tpm_guard` refuses a
license issued with ``--require-tpm`` when there is no working anchor.
:class:`AnchoredSink` tells the guard about committed batches, so activity and epoch
rolls advance the counter beside the request path. docs/adr/0011-tpm-anchor.md,
"Wiring", gives the cadence and the reasons.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from meterbox._fs import atomic_write, fsync_dir
from meterbox.errors import ConfigError, FormatError, MeterboxError, StateError, VerificationError
from meterbox.ledger import (
    Appended,
    Head,
    RecordType,
    TpmCredential,
    TpmReenrolled,
    TpmRollback,
)
from meterbox.ledger import TpmAnchor as TpmAnchorRecord
from meterbox.licenses import License
from meterbox.server._sinks import LedgerEventSink
from meterbox.tpm import (
    CounterVerdict,
    CredentialChallenge,
    TpmAnchor,
    TpmMode,
    TpmProbe,
    decide_mode,
    judge_counter,
    judge_identity,
)

_log = logging.getLogger("meterbox.server.tpm")

TPM_CONFIG: Final = "tpm.json"
CONFIG_VERSION: Final = 1
_AUTH_LEN: Final = 32


@dataclass(frozen=True)
class TpmSetup:
    mode: TpmMode
    tcti: str | None
    reason: str
    counter_auth: bytes | None
    identity: dict[str, object]
    counter: int | None

    def genesis(self) -> dict[str, object]:
        """The genesis entry: the TPM's identity and counter at init, or why there is none."""
        entry: dict[str, object] = {"mode": self.mode.value, **self.identity}
        if self.counter is None:
            entry["reason"] = self.reason
        else:
            entry["counter"] = self.counter
        return entry


def _probe(tcti: str) -> TpmProbe:
    try:
        from meterbox.tpm import TpmDevice
    except ImportError as exc:
        # A lean install without the ``tpm`` extra: there is no way to talk to a TPM, which
        # ``auto`` treats like no TPM and ``require`` refuses, naming the fix.
        return TpmProbe(
            tcti,
            False,
            f"the TPM library is not installed ({exc.name}; pip install 'meterbox[tpm]')",
        )
    return TpmDevice.probe(tcti)


def prepare_tpm(mode: TpmMode, tcti: str, *, counter_auth: bytes | None = None) -> TpmSetup:
    """Probe and set up the TPM at ``tcti``; ``counter_auth`` adopts a counter an earlier,
    interrupted re-enrolment defined with it (a fresh authValue otherwise)."""
    probe = None if mode is TpmMode.OFF else _probe(tcti)
    decision = decide_mode(mode, probe)
    if not decision.use_tpm or decision.tcti is None:
        return TpmSetup(mode, None, decision.reason, None, {"tpm": "none"}, None)
    auth = counter_auth if counter_auth is not None else secrets.token_bytes(_AUTH_LEN)
    from meterbox.tpm import TpmDevice

    with TpmDevice(decision.tcti) as device:
        anchor = TpmAnchor.initialise(device, auth)
        return TpmSetup(
            mode, decision.tcti, decision.reason, auth, anchor.identity(), anchor.read()
        )


def write_tpm_config(data: Path, setup: TpmSetup, *, keep: dict[str, object] | None = None) -> None:
    """Write tpm.json for ``setup``; ``keep`` carries the operator's tunables over."""
    _write_config(data, tpm_config(setup, keep=keep))


def _write_config(data: Path, config: dict[str, object]) -> None:
    atomic_write(data / TPM_CONFIG, (json.dumps(config, indent=1) + "\n").encode())


def tpm_config(setup: TpmSetup, *, keep: dict[str, object] | None = None) -> dict[str, object]:
    """The tpm.json contents for ``setup`` (``keep``: the operator's tunables carried over)."""
    config: dict[str, object] = {
        "v": CONFIG_VERSION,
        "mode": setup.mode.value,
        "tcti": setup.tcti,
        "counter_auth": None if setup.counter_auth is None else setup.counter_auth.hex(),
        "identity": setup.identity,
        "counter_at_init": setup.counter,
    }
    if keep is not None and "advance_every_s" in keep:
        config["advance_every_s"] = keep["advance_every_s"]
    return config


# ----------------------------------------------------------------- the running anchor
#: The server's note of how far it advanced the counter (docs/adr/0011, "Wiring").
ANCHOR_NOTE: Final = "tpm-anchor.json"
NOTE_VERSION: Final = 1
#: Activity advances at most this often by default; ``advance_every_s`` in tpm.json
#: tunes it within the bounds below (a discrete TPM's NV endurance sets the upper
#: bound's purpose: a vTPM or swtpm can take one advance a second).
DEFAULT_ADVANCE_EVERY_S: Final = 60.0
MIN_ADVANCE_EVERY_S: Final = 0.5
MAX_ADVANCE_EVERY_S: Final = 3600.0


def _note_int(raw: dict[str, Any], key: str, *, optional: bool) -> int | None:
    value = raw[key]
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{key} is not a non-negative integer")
    return value


@dataclass(frozen=True)
class AnchorNote:
    """What ``tpm-anchor.json`` says: the last committed value and where the ledger has it.

    ``pending`` is set durably *before* the TPM is asked to increment and cleared once
    the TPM_ANCHOR record is durable, so a crash in between is recognisable at open
    (TPM == pending: resync) and told apart from a restored copy (TPM above both).
    """

    committed: int
    pending: int | None
    seq: int | None
    head: str | None

    def to_bytes(self) -> bytes:
        return (
            json.dumps(
                {
                    "v": NOTE_VERSION,
                    "committed": self.committed,
                    "pending": self.pending,
                    "seq": self.seq,
                    "head": self.head,
                }
            )
            + "\n"
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> AnchorNote:
        try:
            raw = json.loads(data)
            if not isinstance(raw, dict) or raw.get("v") != NOTE_VERSION:
                raise ValueError("not a version-1 note")
            committed = _note_int(raw, "committed", optional=False)
            if committed is None:
                raise ValueError("committed is missing")
            pending = _note_int(raw, "pending", optional=True)
            seq = _note_int(raw, "seq", optional=True)
            head = raw["head"]
            if head is not None and (not isinstance(head, str) or len(head) != 64):
                raise ValueError("head is not 64 hex digits")
            if head is not None:
                bytes.fromhex(head)
        except (ValueError, KeyError, TypeError) as exc:
            raise FormatError(
                "the TPM anchor note is unreadable",
                expected=f'{{"v": {NOTE_VERSION}, "committed": int, "pending": int|null, ...}}',
                found=str(exc)[:120],
                hint="the server records this at open as tpm.rollback (kind 'ledger')",
            ) from None
        return cls(committed, pending, seq, head)


@dataclass(frozen=True)
class OpenVerdict:
    """What the open check decided: a TPM_ROLLBACK payload to write (or none), and why
    the first advance of this run is made (``open`` or ``resync``)."""

    rollback: dict[str, object] | None
    reason: str


def judge_open(
    note: AnchorNote | None,
    genesis_counter: int,
    tpm_value: int,
    *,
    note_in_ledger: bool,
) -> OpenVerdict:
    """Pure: the note (None if missing or unreadable) and the TPM's value at open.

    ``note_in_ledger`` says whether the head the note names is a point of the ledger
    being opened: a note ahead of the ledger means the ledger (or its key files) was put
    back from a copy while the rest of the directory stayed current.
    """
    if note is None:
        return OpenVerdict(
            {
                "k": "ledger",
                "l": genesis_counter,
                "t": tpm_value,
                "d": f"the anchor note {ANCHOR_NOTE} is missing or unreadable",
            },
            "open",
        )
    if not note_in_ledger:
        return OpenVerdict(
            {
                "k": "ledger",
                "l": note.committed,
                "t": tpm_value,
                "d": f"the ledger does not hold the anchor at seq {note.seq} the note names",
            },
            "open",
        )
    verdict = judge_counter(note.committed, note.pending, tpm_value)
    if verdict is CounterVerdict.IN_STEP:
        return OpenVerdict(None, "open")
    if verdict is CounterVerdict.RESYNC:
        return OpenVerdict(None, "resync")
    return OpenVerdict(
        {
            "k": verdict.value,
            "l": note.committed,
            "t": tpm_value,
            "d": "the TPM counter is above the ledger's: an older copy of the data directory"
            if verdict is CounterVerdict.ROLLBACK
            else "the ledger committed to a value this TPM never reached",
        },
        "open",
    )


def read_tpm_config(data: Path) -> dict[str, object] | None:
    """tpm.json as written at init, or None when the instance has no TPM (or predates it)."""
    path = data / TPM_CONFIG
    if not path.exists():
        return None
    try:
        config = json.loads(path.read_bytes())
    except ValueError as exc:
        raise FormatError(
            f"{path} is not JSON",
            expected="the tpm.json written by 'meterbox server init'",
            found=str(exc)[:80],
            hint="restore tpm.json from the instance's backup; the vendor sees a changed TPM",
        ) from None
    if not isinstance(config, dict) or config.get("v") != CONFIG_VERSION:
        raise FormatError(
            f"{path} has an unknown version",
            expected=f'{{"v": {CONFIG_VERSION}, ...}}',
            found=repr(config)[:80],
        )
    return config


class _Appender(Protocol):
    def append(self, rtype: RecordType | str, payload: dict[str, Any]) -> Appended: ...

    def verify_point(self, point: Head) -> None: ...

    @property
    def epoch(self) -> int: ...

    @property
    def head(self) -> Head: ...


class TpmGuard:
    """The running server's counter: advances it and binds every value into the ledger.

    Every advance is: note ``pending`` durably, ``TPM2_NV_Increment``, append TPM_ANCHOR
    (durable), note ``committed``. One lock serialises advances and attestations, so an
    attestation always certifies the value of the last durable anchor.
    """

    def __init__(
        self,
        data: Path,
        device: Any,
        anchor: TpmAnchor,
        writer: _Appender,
        *,
        advance_every_s: float = DEFAULT_ADVANCE_EVERY_S,
    ) -> None:
        self._data = data
        self._device = device
        self._anchor = anchor
        self._writer = writer
        self._every = min(max(advance_every_s, MIN_ADVANCE_EVERY_S), MAX_ADVANCE_EVERY_S)
        self.nv_name = str(anchor.identity()["nv_name"])
        self.lock = threading.Lock()
        self._last_advance = time.monotonic()
        self._epoch = writer.epoch
        self._dirty = False
        self._busy = False
        self._closed = False
        self.advances = 0

    # -------------------------------------------------------------- open
    @classmethod
    def open(cls, data: Path, writer: _Appender) -> TpmGuard | None:
        """Attach the instance's TPM at open and check it against the ledger.

        Returns ``None`` (after recording why) when the instance has no TPM, when the TPM
        does not answer, or when it is not the TPM recorded at init. Never refuses: a
        rollback is evidence for the vendor, not a reason to stop serving.
        """
        config = read_tpm_config(data)
        if config is None or not config.get("counter_auth") or not config.get("tcti"):
            return None
        identity = config.get("identity")
        if not isinstance(identity, dict):
            identity = {}
        auth = bytes.fromhex(str(config["counter_auth"]))
        every = config.get("advance_every_s", DEFAULT_ADVANCE_EVERY_S)
        every = float(every) if isinstance(every, int | float) else DEFAULT_ADVANCE_EVERY_S
        from meterbox.tpm import TpmDevice

        try:
            device = TpmDevice(str(config["tcti"]))
        except MeterboxError as exc:
            writer.append(
                RecordType.TPM_ROLLBACK,
                TpmRollback(kind="unavailable", detail=exc.problem[:200]).to_map(),
            )
            return None
        try:
            ek = device.endorsement_key()
            if ek.name.hex() != identity.get("ek_name"):
                raise _Foreign(f"endorsement key {ek.name.hex()[:16]}... is not the recorded one")
            try:
                anchor = TpmAnchor(device, auth)
            except MeterboxError as exc:
                raise _Foreign(f"the counter index is not usable here: {exc.problem}") from exc
            differ = judge_identity(identity, anchor.identity())
            if differ:
                raise _Foreign("TPM identity differs in " + ", ".join(differ))
        except _Foreign as exc:
            device.close()
            writer.append(
                RecordType.TPM_ROLLBACK, TpmRollback(kind="foreign", detail=str(exc)[:200]).to_map()
            )
            return None
        except BaseException:
            device.close()
            raise
        guard = cls(data, device, anchor, writer, advance_every_s=every)
        try:
            guard._check_at_open(int(str(config.get("counter_at_init") or 0)))
        except MeterboxError as exc:
            # The TPM answered but refused the counter (a re-defined index with another
            # authValue, NV rate limiting, a failing device): serve, unanchored, on record.
            device.close()
            writer.append(
                RecordType.TPM_ROLLBACK,
                TpmRollback(kind="unavailable", detail=exc.problem[:200]).to_map(),
            )
            return None
        except BaseException:
            device.close()
            raise
        return guard

    def _read_note(self) -> AnchorNote | None:
        try:
            return AnchorNote.from_bytes((self._data / ANCHOR_NOTE).read_bytes())
        except (OSError, FormatError):
            return None

    def _note_in_ledger(self, note: AnchorNote) -> bool:
        if note.seq is None or note.head is None:
            return True
        try:
            self._writer.verify_point(Head(note.seq, bytes.fromhex(note.head)))
        except VerificationError:
            return False
        except StateError:
            # Compaction dropped the point (a receipt covers it): nothing to compare with.
            return True
        return True

    def _check_at_open(self, genesis_counter: int) -> None:
        note = self._read_note()
        if note is None and not (self._data / ANCHOR_NOTE).exists():
            # A first open after init: the genesis holds the counter value.
            note = AnchorNote(genesis_counter, None, None, None)
        tpm_value = self._anchor.read()
        verdict = judge_open(
            note,
            genesis_counter,
            tpm_value,
            note_in_ledger=note is not None and self._note_in_ledger(note),
        )
        if verdict.rollback is not None:
            self._writer.append(
                RecordType.TPM_ROLLBACK, TpmRollback.from_map(verdict.rollback).to_map()
            )
        if verdict.reason == "resync":
            # The TPM advanced for an anchor that never became durable: commit its value.
            with self.lock:
                self._commit(tpm_value, "resync")
        self.advance("open")

    # ---------------------------------------------------------- advancing
    def _write_note(self, note: AnchorNote) -> None:
        atomic_write(self._data / ANCHOR_NOTE, note.to_bytes(), mode=0o600)

    def _commit(self, value: int, reason: str) -> Appended:
        appended = self._writer.append(
            RecordType.TPM_ANCHOR,
            TpmAnchorRecord(counter=value, nv_name=self.nv_name, reason=reason).to_map(),
        )
        self._write_note(AnchorNote(value, None, appended.seq, appended.head.hash.hex()))
        self._last_advance = time.monotonic()
        self._epoch = self._writer.epoch
        self._dirty = False
        return appended

    def advance_locked(self, reason: str) -> Appended:
        """Advance with :attr:`lock` held by the caller."""
        note = self._read_note()
        current = self._anchor.read()
        if note is not None and note.pending is not None and current == note.pending:
            # An earlier advance of this run incremented but its record failed (a disk
            # error): commit that value first, so the chain never skips one.
            self._commit(current, "resync")
            note = self._read_note()
        self._write_note(
            AnchorNote(
                current if note is None else note.committed,
                current + 1,
                None if note is None else note.seq,
                None if note is None else note.head,
            )
        )
        value = self._anchor.advance(bytes(32))
        self.advances += 1
        return self._commit(value, reason)

    def advance(self, reason: str) -> Appended:
        with self.lock:
            return self.advance_locked(reason)

    def attest_locked(self, head: bytes, nonce: bytes) -> bytes:
        return self._anchor.attest(head, nonce)

    def answer_challenge(self, receipt_id: str, challenge: bytes) -> TpmCredential:
        """Answer a receipt's challenge with this TPM (see :func:`answer_challenge`)."""
        with self.lock:
            return answer_challenge(self._anchor, receipt_id, challenge)

    # ----------------------------------------------------------- activity
    def note_activity(self) -> bool:
        """A batch committed; True when an activity or epoch advance is due now."""
        self._dirty = True
        if self._busy or self._closed:
            return False
        elapsed = time.monotonic() - self._last_advance
        return self._writer.epoch != self._epoch or elapsed >= self._every

    def advance_if_due(self) -> None:
        """Run in a worker thread: the advance :meth:`note_activity` asked for."""
        with self.lock:
            if self._closed or self._busy or not self._dirty:
                return
            self._busy = True
            try:
                reason = "epoch" if self._writer.epoch != self._epoch else "activity"
                self.advance_locked(reason)
            finally:
                self._busy = False

    def close(self) -> None:
        """Advance once more for the records of this run (a clean stop), then let go."""
        with self.lock:
            if self._closed:
                return
            try:
                if self._dirty:
                    self.advance_locked("close")
            finally:
                self._closed = True
                self._device.close()


class _Foreign(Exception):
    pass


# ----------------------------------------------------------- credential challenge
def answer_challenge(anchor: TpmAnchor | None, receipt_id: str, challenge: bytes) -> TpmCredential:
    """The TPM_CREDENTIAL payload answering a receipt's ``tpm_challenge``.

    Never raises for the challenge's sake: a challenge the server cannot answer (no TPM
    attached, a malformed one, one for another attestation key, a TPM that refuses) is
    sealed with the reason instead, since the receipt itself stands and the vendor is
    the one to judge (docs/adr/0036).
    """
    try:
        ak_name = CredentialChallenge.from_bytes(challenge).ak_name.hex()
    except FormatError as exc:
        return TpmCredential(receipt_id=receipt_id, ak_name="", error=exc.problem[:200])
    if anchor is None:
        return TpmCredential(
            receipt_id=receipt_id,
            ak_name=ak_name,
            error="no TPM is attached to this server (see the TPM_ROLLBACK records at open)",
        )
    try:
        proof = anchor.activate_credential(challenge)
    except MeterboxError as exc:
        return TpmCredential(receipt_id=receipt_id, ak_name=ak_name, error=exc.problem[:200])
    return TpmCredential(receipt_id=receipt_id, ak_name=ak_name, proof=proof)


class AnchoredSink:
    """An event sink that tells the guard about committed batches (activity advances)."""

    def __init__(self, inner: LedgerEventSink, guard: TpmGuard) -> None:
        self._inner = inner
        self._guard = guard
        self._tasks: set[asyncio.Future[None]] = set()

    async def record(self, kind: str, payload: dict[str, Any]) -> int:
        seq = await self._inner.record(kind, payload)
        if self._guard.note_activity():
            # The advance runs beside the request path: the request that made it due
            # does not wait for the TPM.
            task = asyncio.get_running_loop().run_in_executor(None, self._guard.advance_if_due)
            self._tasks.add(task)
            task.add_done_callback(self._done)
        return seq

    def _done(self, task: asyncio.Future[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            _log.error("TPM counter advance failed: %s", exc)

    def head_info(self) -> tuple[int, str]:
        return self._inner.head_info()


# -------------------------------------------------------------- re-enrolment
def plan_reenrolment(
    old: dict[str, object] | None,
    note: AnchorNote | None,
    new: TpmSetup,
    reason: str | None,
) -> TpmReenrolled:
    """Pure: the TPM_REENROLLED record moving from tpm.json's TPM to ``new``, or refuse.

    The old counter is the last value the anchor note committed (the value the ledger's
    last anchor holds), or the value at init when there is no note yet.
    """
    identity = old.get("identity") if old is not None else None
    if not isinstance(identity, dict) or identity.get("tpm") != "tpm2":
        raise ConfigError(
            "this instance has no TPM to re-enrol from",
            expected="an instance initialised with a TPM (tpm.json naming one)",
            found="no tpm.json" if old is None else "tpm.json without a TPM identity",
            hint="an instance initialised with --tpm off stays without a TPM; "
            "initialise a new instance with --tpm require",
        )
    if new.counter is None or new.identity.get("tpm") != "tpm2":
        raise ConfigError(
            "no TPM to re-enrol on",
            expected="a TPM 2.0 answering at --tpm-tcti",
            found=new.reason,
            hint="check the TCTI and that this user may open the TPM",
        )
    if identity.get("ek_name") == new.identity.get("ek_name"):
        raise ConfigError(
            "the TPM at --tpm-tcti is the one the instance is enrolled with",
            expected="a different TPM (a replaced chip, a new vTPM)",
            found=f"EK {str(identity.get('ek_name'))[:20]}... again",
            hint="nothing to re-enrol; start the server as usual",
        )
    at_init = old.get("counter_at_init") if old is not None else None
    old_counter = note.committed if note is not None else at_init
    if not isinstance(old_counter, int) or isinstance(old_counter, bool):
        old_counter = 0
    return TpmReenrolled(
        old_ek_name=str(identity.get("ek_name", "")),
        old_ak_name=str(identity.get("ak_name", "")),
        old_nv_name=str(identity.get("nv_name", "")),
        old_counter=old_counter,
        new_ek_name=str(new.identity["ek_name"]),
        new_ak_name=str(new.identity["ak_name"]),
        new_nv_name=str(new.identity["nv_name"]),
        new_counter=new.counter,
        owner_deletable=bool(new.identity.get("owner_deletable")),
        reason=reason[:200] if reason else None,
    )


#: The re-enrolment in progress (0600: it holds the new counter's authValue until tpm.json
#: does). docs/adr/0036-tpm-credential-challenge.md, "Re-enrolment crash window".
REENROL_INTENT: Final = "tpm-reenrol.json"
INTENT_VERSION: Final = 1


@dataclass(frozen=True)
class ReenrolIntent:
    """What ``tpm-reenrol.json`` says: the new TPM and, once the record is about to be
    sealed, the whole tpm.json to write and the ledger head just before the record.

    Written in two steps: ``(ek_name, tcti, counter_auth)`` before the new TPM's counter
    is defined (a crash then loses no authValue: a re-run adopts the counter with it),
    then ``config`` and ``before`` right before TPM_REENROLLED is appended. A ledger whose
    head is past ``before`` holds the record (the record is the only write unit appended
    after it, and a unit is durable whole or cut whole), so the move is finished from
    ``config`` instead of being sealed a second time.
    """

    ek_name: str
    tcti: str
    counter_auth: bytes
    config: dict[str, object] | None = None
    before: Head | None = None

    def to_bytes(self) -> bytes:
        return (
            json.dumps(
                {
                    "v": INTENT_VERSION,
                    "ek_name": self.ek_name,
                    "tcti": self.tcti,
                    "counter_auth": self.counter_auth.hex(),
                    "config": self.config,
                    "before": None
                    if self.before is None
                    else {"seq": self.before.seq, "head": self.before.hash.hex()},
                },
                indent=1,
            )
            + "\n"
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> ReenrolIntent:
        try:
            raw = json.loads(data)
            if not isinstance(raw, dict) or raw.get("v") != INTENT_VERSION:
                raise ValueError(f"not a version-{INTENT_VERSION} intent")
            if set(raw) != {"v", "ek_name", "tcti", "counter_auth", "config", "before"}:
                raise ValueError(f"keys {sorted(raw)}")
            ek_name, tcti, auth = raw["ek_name"], raw["tcti"], raw["counter_auth"]
            if not all(isinstance(v, str) for v in (ek_name, tcti, auth)):
                raise ValueError("ek_name, tcti and counter_auth must be strings")
            counter_auth = bytes.fromhex(auth)
            if len(counter_auth) != _AUTH_LEN:
                raise ValueError(f"counter_auth is {len(counter_auth)} bytes, not {_AUTH_LEN}")
            config = raw["config"]
            if config is not None:
                identity = config.get("identity") if isinstance(config, dict) else None
                if not isinstance(identity, dict) or identity.get("ek_name") != ek_name:
                    raise ValueError("config does not name the intent's endorsement key")
                if config.get("v") != CONFIG_VERSION:
                    raise ValueError("config is not a version-1 tpm.json")
            before = raw["before"]
            head: Head | None = None
            if before is not None:
                if not isinstance(before, dict) or set(before) != {"seq", "head"}:
                    raise ValueError("before is not {seq, head}")
                seq, digest = before["seq"], before["head"]
                if not isinstance(seq, int) or isinstance(seq, bool) or seq < -1:
                    raise ValueError("before.seq is not an integer >= -1")
                if not isinstance(digest, str) or len(digest) != 64:
                    raise ValueError("before.head is not 64 hex digits")
                head = Head(seq, bytes.fromhex(digest))
            if (config is None) != (head is None):
                raise ValueError("config and before are written together")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise FormatError(
                f"the re-enrolment note {REENROL_INTENT} is unreadable",
                expected=f'{{"v": {INTENT_VERSION}, "ek_name": hex, "tcti": str, '
                '"counter_auth": hex, "config": tpm.json|null, "before": {seq, head}|null}',
                found=str(exc)[:120],
                hint=f"restore {REENROL_INTENT} from a backup, or delete it and run "
                "'meterbox server tpm reenrol' again (on a TPM whose counter index is free)",
            ) from None
        return cls(ek_name, tcti, counter_auth, config, head)


def read_reenrol_intent(data: Path) -> ReenrolIntent | None:
    try:
        raw = (data / REENROL_INTENT).read_bytes()
    except FileNotFoundError:
        return None
    return ReenrolIntent.from_bytes(raw)


def _write_intent(data: Path, intent: ReenrolIntent) -> None:
    atomic_write(data / REENROL_INTENT, intent.to_bytes(), mode=0o600)


def sealed_reenrolment(intent: ReenrolIntent | None, head: Head) -> bool:
    """Pure: whether the ledger ending at ``head`` holds the intent's TPM_REENROLLED."""
    return intent is not None and intent.before is not None and head.seq > intent.before.seq


def prepare_reenrolment(data: Path, tcti: str) -> TpmSetup:
    """Set up the new TPM for :func:`reenrol_tpm`, after checking it is another TPM.

    The endorsement key is compared first: on the TPM the instance already uses, setting
    up a counter again would only fail on its authValue, with a message that hides the
    real mistake. Then the counter's authValue is noted in ``tpm-reenrol.json`` (or taken
    from it, when an interrupted run on this TPM left one) before the counter is defined;
    a TPM that does not answer or is refused leaves the directory as it was.
    """
    old = read_tpm_config(data)
    identity = old.get("identity") if old is not None else None
    auth: bytes | None = None
    if isinstance(identity, dict) and identity.get("tpm") == "tpm2":
        probe = _probe(tcti)
        if probe.found:
            from meterbox.tpm import TpmDevice

            with TpmDevice(tcti) as device:
                ek_name = device.endorsement_key().name.hex()
            if ek_name == identity.get("ek_name"):
                raise ConfigError(
                    "the TPM at --tpm-tcti is the one the instance is enrolled with",
                    expected="a different TPM (a replaced chip, a new vTPM)",
                    found=f"EK {ek_name[:20]}... again",
                    hint="nothing to re-enrol; start the server as usual",
                )
            earlier = read_reenrol_intent(data)
            if earlier is not None and earlier.ek_name == ek_name:
                auth = earlier.counter_auth
            else:
                auth = secrets.token_bytes(_AUTH_LEN)
                _write_intent(data, ReenrolIntent(ek_name, tcti, auth))
    return prepare_tpm(TpmMode.REQUIRE, tcti, counter_auth=auth)


def reenrol_tpm(
    data: Path, writer: _Appender, new: TpmSetup, reason: str | None
) -> tuple[TpmReenrolled, Appended]:
    """Move the instance in ``data`` (server stopped, TPM not attached) to ``new``.

    Order: the intent (new tpm.json and the head before the record), the record
    (durable), tpm.json, the anchor note, then the intent goes. The ledger holds the move
    before anything points at the new TPM, and a crash anywhere after the record is
    finished by :func:`finish_reenrolment` at the next open or re-run, never sealed twice.
    """
    old = read_tpm_config(data)
    try:
        note: AnchorNote | None = AnchorNote.from_bytes((data / ANCHOR_NOTE).read_bytes())
    except (OSError, FormatError):
        note = None
    record = plan_reenrolment(old, note, new, reason)
    if new.counter_auth is None or new.tcti is None:
        raise ConfigError(
            "no TPM to re-enrol on",
            expected="a TPM 2.0 counter set up at --tpm-tcti",
            found=new.reason,
            hint="check the TCTI and that this user may open the TPM",
        )
    intent = ReenrolIntent(
        record.new_ek_name,
        new.tcti,
        new.counter_auth,
        tpm_config(new, keep=old),
        writer.head,
    )
    _write_intent(data, intent)
    appended = _seal_reenrolment(writer, record)
    _finish(data, intent, appended.head)
    return record, appended


def _seal_reenrolment(writer: _Appender, record: TpmReenrolled) -> Appended:
    return writer.append(RecordType.TPM_REENROLLED, record.to_map())


def _finish(data: Path, intent: ReenrolIntent, point: Head) -> None:
    """tpm.json, then the anchor note at ``point`` (a ledger point at or after the record),
    then the intent goes. Idempotent: every step rewrites what the intent says."""
    assert intent.config is not None
    _write_config(data, intent.config)
    counter = intent.config.get("counter_at_init")
    value = counter if isinstance(counter, int) else 0
    _write_reenrol_note(data, AnchorNote(value, None, point.seq, point.hash.hex()))
    _drop_intent(data)


def _write_reenrol_note(data: Path, note: AnchorNote) -> None:
    atomic_write(data / ANCHOR_NOTE, note.to_bytes(), mode=0o600)


def _drop_intent(data: Path) -> None:
    (data / REENROL_INTENT).unlink(missing_ok=True)
    fsync_dir(data)


def finish_reenrolment(data: Path, head: Head) -> ReenrolIntent | None:
    """Finish a re-enrolment a crash interrupted after its record was sealed.

    ``head`` is the ledger's head before this open wrote anything (:func:`read_head`).
    Returns the intent finished, or None when there is none or its record was never
    sealed (the intent then stays, so a re-run adopts the counter it defined).
    """
    intent = read_reenrol_intent(data)
    if intent is None or not sealed_reenrolment(intent, head):
        return None
    _finish(data, intent, head)
    _log.warning(
        "finished the re-enrolment on the TPM with EK %s... sealed before a crash",
        intent.ek_name[:16],
    )
    return intent


def require_tpm_guard(licenses: Sequence[License], guard: TpmGuard | None) -> None:
    """Refuse to serve a license issued with ``--require-tpm`` without a working anchor."""
    needing = [lic.license_id for lic in licenses if lic.require_tpm]
    if needing and guard is None:
        raise ConfigError(
            "a license requires a TPM, and this server runs without one",
            expected=f"the TPM recorded at init answering (for {', '.join(needing)})",
            found="no TPM anchor (initialised with --tpm off, the TPM did not answer, or "
            "it is not the TPM recorded at init)",
            hint="run the server on the machine and TPM it was initialised with "
            "('meterbox server init --tpm require'), or ask the vendor to re-enrol it",
        )
