"""The vendor's TPM checks of one report: the ledger's anchors and the report's attestation.

Pure: records and the report's header go in, findings and the pins to store come out.
Ingest feeds every verified record to :meth:`TpmReportCheck.feed` and calls
:meth:`TpmReportCheck.finish` once the report's head is known; it stores
:attr:`TpmReportCheck.pins_after` only when it accepts the report.

What is checked (docs/adr/0011-tpm-anchor.md, docs/spec/tpm-attestation.md):

* TPM_ROLLBACK records the server wrote at open: ``tpm.ledger.rollback`` (the TPM was
  ahead of the ledger, or the ledger behind the server's own anchor note) and
  ``tpm.ledger.foreign`` (another TPM, or a counter this TPM never reached) are critical;
  ``tpm.unavailable`` (the TPM did not answer) is a warning, since the next report
  without an attestation is ``tpm.missing`` anyway.
* TPM_ANCHOR values: consecutive anchors of one ledger differ by exactly 1 (0 for a
  ``resync`` after a crash between increment and record). A larger step means the TPM
  advanced in a history this ledger does not hold: a restored copy whose open check
  was defeated (``tpm.counter.gap``); a step back, or an anchor naming another counter
  index, is ``tpm.ledger.foreign``. The first anchor continues from the counter the
  genesis recorded, or from the counter the vendor pinned at the last accepted report.
* TPM_REENROLLED (``meterbox server tpm reenrol``): ``tpm.reenrolled``, a warning; from
  that record on, anchors continue from its new counter on its new counter index, and
  the attestation is checked against the new TPM it names instead of the pins. This is
  the only way the pins move to another TPM: without the record a new TPM stays
  ``tpm.quote.foreign`` / ``tpm.ledger.foreign``. A record whose old TPM is not the
  pinned one, or whose old counter is not where the anchors got to, is critical
  (``tpm.anchor.invalid``, ``tpm.counter.gap``).
* The attestation: :func:`meterbox.tpm.verify_attestation` against the pins, bound to
  the report's head and to :func:`meterbox.tpm.report_nonce` of the last receipt, with
  the last anchor as the ledger's counter. An instance whose genesis records a TPM must
  attest in every report, as must one whose license requires a TPM.
* The EK certificate, when the vendor configured manufacturer CAs (``vendor tpm-ca
  add``): ``tpm.ek.untrusted`` (a certificate that does not chain to one) and
  ``tpm.ek.missing`` (no certificate) are critical, and reject the report, when a
  license requires a TPM, and warnings otherwise (docs/adr/0031).
* The credential challenge (docs/adr/0036): an attested AK not yet proven gets a
  challenge sealed to the bundle's EK in the receipt (:func:`judge_credential`, with
  the vendor's state in ``tpm_credentials``); the server's TPM_CREDENTIAL answer
  proves it (no finding), a wrong proof or one for another key is critical
  (``tpm.ak.forged``), no answer yet is ``tpm.ak.outstanding`` (info) and no answer
  after :data:`UNPROVEN_AFTER_REPORTS` reports, or an answer saying the TPM could not
  release the secret, is ``tpm.ak.unproven``: critical when a license requires a TPM,
  a warning otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from cryptography import x509

from meterbox.errors import FormatError
from meterbox.ledger import (
    Finding,
    Head,
    Record,
    RecordType,
    TpmAnchor,
    TpmCredential,
    TpmReenrolled,
    TpmRollback,
)
from meterbox.tpm import (
    AttestationBundle,
    TpmFinding,
    TpmPins,
    VerifiedAttestation,
    report_nonce,
    verify_attestation,
)

LEDGER_ROLLBACK: Final = "tpm.ledger.rollback"
LEDGER_FOREIGN: Final = "tpm.ledger.foreign"
UNAVAILABLE: Final = "tpm.unavailable"
COUNTER_GAP: Final = "tpm.counter.gap"
ANCHOR_INVALID: Final = "tpm.anchor.invalid"
QUOTE_OK: Final = "tpm.quote.ok"
REENROLLED: Final = "tpm.reenrolled"
EK_UNTRUSTED: Final = "tpm.ek.untrusted"
EK_MISSING: Final = "tpm.ek.missing"
AK_FORGED: Final = "tpm.ak.forged"
AK_UNPROVEN: Final = "tpm.ak.unproven"
AK_OUTSTANDING: Final = "tpm.ak.outstanding"
#: Reports ingested after the one whose receipt challenged the AK, none answering, before
#: the AK counts as unproven: the site may export before it imports a receipt, and a
#: receipt may be lost once.
UNPROVEN_AFTER_REPORTS: Final = 3

_ROLLBACK_KINDS: Final = {
    "rollback": (LEDGER_ROLLBACK, "the TPM counter was above the ledger's: an older copy"),
    "ledger": (LEDGER_ROLLBACK, "the ledger was older than the server's anchor note"),
    "ahead": (LEDGER_FOREIGN, "the ledger committed to a value this TPM never reached"),
    "foreign": (LEDGER_FOREIGN, "the data directory was opened on another TPM"),
}
_FINDINGS_MAX: Final = 20


@dataclass(frozen=True)
class CredentialState:
    """What the vendor keeps per instance (``tpm_credentials``): the AK challenged, and
    either the secret and challenge still outstanding or ``proven``."""

    ak_name: bytes
    secret: bytes | None
    challenge: bytes | None
    reports: int = 0
    proven: bool = False


@dataclass(frozen=True)
class CredentialVerdict:
    findings: tuple[Finding, ...]
    #: The state to store when the report is accepted.
    state: CredentialState | None
    #: The challenge the receipt carries (None: nothing outstanding).
    challenge: bytes | None


def judge_credential(
    state: CredentialState | None,
    answers: Sequence[tuple[int, TpmCredential]],
    *,
    ak_name: bytes,
    ek_public: bytes,
    required: bool,
    new_challenge: Any,
) -> CredentialVerdict:
    """Pure: the credential findings of one report whose attestation verified for ``ak_name``.

    ``answers`` are the report's new TPM_CREDENTIAL records (seq, payload);
    ``new_challenge(ek_public, ak_name) -> (secret, challenge)`` makes a challenge (the
    shell passes :func:`meterbox.tpm.make_credential_challenge` over a CSPRNG secret).
    Answers are judged against the challenge outstanding before this report; an AK that
    changed since (a re-enrolment) is challenged afresh.
    """
    from meterbox.tpm import check_credential_proof

    found: list[Finding] = []
    severity: Literal["critical", "warning"] = "critical" if required else "warning"
    outstanding = state is not None and not state.proven and state.secret is not None
    proven_now = False
    for seq, answer in answers:
        if state is None or answer.ak_name != state.ak_name.hex():
            found.append(
                Finding(
                    AK_FORGED,
                    "critical",
                    f"a credential answer for attestation key {answer.ak_name[:20]}..., to "
                    "which this vendor sent this instance no challenge (a proof copied from "
                    "another instance or another TPM)",
                    seq,
                )
            )
            continue
        if not outstanding:
            continue  # a proven key answered again (a receipt imported twice): nothing new
        assert state.secret is not None
        if answer.proof is None:
            found.append(
                Finding(
                    AK_UNPROVEN,
                    severity,
                    "the server could not answer the TPM credential challenge: "
                    f"{answer.error or 'no reason given'}; the attestation key is not shown "
                    "to be in the TPM whose EK the reports name",
                    seq,
                )
            )
            continue
        try:
            check_credential_proof(state.secret, state.ak_name, answer.proof)
        except TpmFinding as exc:
            found.append(
                Finding(
                    AK_FORGED,
                    "critical",
                    f"the credential answer does not prove the attestation key: {exc.problem}; "
                    "the key is not in the TPM whose EK certificate the reports carry",
                    seq,
                )
            )
            continue
        proven_now = True
    if any(f.code == AK_FORGED for f in found):
        # Keep the challenge outstanding: a forged answer proves nothing.
        again = state.challenge if state is not None and outstanding else None
        return CredentialVerdict(tuple(found), state, again)
    if state is not None and (proven_now or state.proven):
        state = CredentialState(state.ak_name, None, None, 0, True)
    if state is None or state.ak_name != ak_name:
        secret, challenge = new_challenge(ek_public, ak_name)
        return CredentialVerdict(
            tuple(found), CredentialState(ak_name, secret, challenge), challenge
        )
    if state.proven:
        return CredentialVerdict(tuple(found), state, None)
    reports = state.reports + 1
    if not found:
        if reports >= UNPROVEN_AFTER_REPORTS:
            found.append(
                Finding(
                    AK_UNPROVEN,
                    severity,
                    f"{reports} reports since the TPM credential challenge and no answer: the "
                    "attestation key is not shown to be in the TPM whose EK the reports name "
                    "(import the latest receipt on the server, or the key is not in that TPM)",
                )
            )
        else:
            found.append(
                Finding(
                    AK_OUTSTANDING,
                    "info",
                    "the TPM credential challenge is not answered yet (the site imports the "
                    "receipt carrying it, and its next report answers)",
                )
            )
    return CredentialVerdict(
        tuple(found),
        CredentialState(state.ak_name, state.secret, state.challenge, reports),
        state.challenge,
    )


@dataclass
class TpmReportCheck:
    """One report's TPM checks. ``pins`` is what the vendor stored for the instance."""

    pins: TpmPins
    required: bool
    findings: list[Finding] = field(default_factory=list)
    #: The pins to store if the report is accepted (set by :meth:`finish`).
    pins_after: TpmPins | None = None
    #: Whether the genesis records a TPM (then every report must attest).
    genesis_tpm: bool = False
    #: The TPM manufacturer CAs the vendor trusts (empty: EK certificates not checked).
    ek_roots: Sequence[x509.Certificate] = ()
    #: The credential challenge outstanding for (or the proof of) the pinned AK.
    credential: CredentialState | None = None
    #: ``(ek_public, ak_name) -> (secret, challenge)``; None: no credential check.
    new_challenge: Any = None
    #: What :func:`judge_credential` decided (set by :meth:`finish`).
    credential_after: CredentialVerdict | None = None
    _answers: list[tuple[int, TpmCredential]] = field(default_factory=list)
    _prev: int | None = None
    _nv_name: str | None = None
    _last_anchor: int | None = None

    def __post_init__(self) -> None:
        self._prev = self.pins.last_counter
        if self.pins.nv_name is not None:
            self._nv_name = self.pins.nv_name.hex()

    def _find(self, code: str, severity: Any, message: str, seq: int | None) -> None:
        if len(self.findings) < _FINDINGS_MAX:
            self.findings.append(Finding(code, severity, message, seq))

    def feed(self, record: Record, acked: bool) -> None:
        t = record.type
        if t is RecordType.GENESIS:
            self._genesis(record.payload)
        if acked:
            return  # judged with the report that was acknowledged
        if t is RecordType.TPM_ROLLBACK:
            self._rollback(record)
        elif t is RecordType.TPM_ANCHOR:
            self._anchor(record)
        elif t is RecordType.TPM_REENROLLED:
            self._reenrolled(record)
        elif t is RecordType.TPM_CREDENTIAL:
            try:
                self._answers.append((record.seq, TpmCredential.from_map(record.payload)))
            except FormatError as exc:
                self._find(AK_FORGED, "critical", f"a tpm.credential record: {exc}", record.seq)

    def _genesis(self, payload: Mapping[str, Any]) -> None:
        entry = payload.get("tpm")
        if not isinstance(entry, Mapping) or entry.get("tpm") != "tpm2":
            return
        self.genesis_tpm = True
        counter, nv_name = entry.get("counter"), entry.get("nv_name")
        if self._prev is None and isinstance(counter, int) and not isinstance(counter, bool):
            self._prev = counter
        if self._nv_name is None and isinstance(nv_name, str):
            self._nv_name = nv_name

    def _rollback(self, record: Record) -> None:
        try:
            rb = TpmRollback.from_map(record.payload)
        except FormatError as exc:
            self._find(ANCHOR_INVALID, "critical", f"a tpm.rollback record: {exc}", record.seq)
            return
        counters = f" (ledger {rb.ledger_counter}, TPM {rb.tpm_counter})"
        if rb.kind == "unavailable":
            self._find(
                UNAVAILABLE,
                "warning",
                "the server ran without its TPM, which did not answer: " + (rb.detail or ""),
                record.seq,
            )
            return
        code, meaning = _ROLLBACK_KINDS.get(rb.kind, (LEDGER_ROLLBACK, f"kind {rb.kind!r}"))
        self._find(
            code,
            "critical",
            f"the server recorded a TPM rollback at open: {meaning}{counters}"
            + (f"; {rb.detail}" if rb.detail else ""),
            record.seq,
        )

    def _anchor(self, record: Record) -> None:
        try:
            anchor = TpmAnchor.from_map(record.payload)
        except FormatError as exc:
            self._find(ANCHOR_INVALID, "critical", f"a tpm.anchor record: {exc}", record.seq)
            return
        if self._nv_name is not None and anchor.nv_name != self._nv_name:
            self._find(
                LEDGER_FOREIGN,
                "critical",
                f"an anchor names counter index {anchor.nv_name[:20]}..., not the recorded "
                f"{self._nv_name[:20]}...",
                record.seq,
            )
        prev = self._prev
        if prev is not None:
            step = anchor.counter - prev
            if step > 1 or (step == 0 and anchor.reason != "resync"):
                self._find(
                    COUNTER_GAP,
                    "critical",
                    f"the TPM counter went from {prev} to {anchor.counter} between two anchors "
                    "of this ledger: the TPM advanced in a history the ledger does not hold "
                    "(a restored copy of the data directory or its key files)",
                    record.seq,
                )
            elif step < 0:
                self._find(
                    LEDGER_FOREIGN,
                    "critical",
                    f"the TPM counter went back from {prev} to {anchor.counter}: "
                    "another TPM or a replaced counter",
                    record.seq,
                )
        self._prev = anchor.counter
        self._last_anchor = anchor.counter

    def _reenrolled(self, record: Record) -> None:
        try:
            moved = TpmReenrolled.from_map(record.payload)
            names = [
                bytes.fromhex(h) for h in (moved.new_ak_name, moved.new_ek_name, moved.new_nv_name)
            ]
        except (FormatError, ValueError) as exc:
            self._find(ANCHOR_INVALID, "critical", f"a tpm.reenrolled record: {exc}", record.seq)
            return
        pinned = self.pins.ak_name
        if pinned is not None and moved.old_ak_name != pinned.hex():
            self._find(
                ANCHOR_INVALID,
                "critical",
                f"a re-enrolment away from attestation key {moved.old_ak_name[:20]}..., "
                f"which is not the pinned {pinned.hex()[:20]}...",
                record.seq,
            )
            return
        if self._prev is not None and moved.old_counter != self._prev:
            self._find(
                COUNTER_GAP,
                "critical",
                f"the re-enrolment left the old TPM at counter {moved.old_counter}, but this "
                f"ledger's anchors reached {self._prev}: the directory re-enrolled is not "
                "the one the vendor followed",
                record.seq,
            )
        self._find(
            REENROLLED,
            "warning",
            f"the instance was re-enrolled on another TPM (EK {moved.old_ek_name[:16]}... -> "
            f"{moved.new_ek_name[:16]}...) at counter {moved.new_counter}"
            + (f": {moved.reason}" if moved.reason else "")
            + "; confirm with the customer that the TPM was replaced",
            record.seq,
        )
        # From here on the new TPM is the one to check: the attestation is verified
        # against it and anchors continue from its counter.
        self.pins = TpmPins(names[0], names[1], names[2], moved.new_counter)
        self._nv_name = moved.new_nv_name
        self._prev = moved.new_counter
        self._last_anchor = moved.new_counter

    def _ek_findings(self, verified: VerifiedAttestation) -> list[Finding]:
        """tpm.ek.*: judged only when the vendor configured manufacturer CAs."""
        if not self.ek_roots or verified.ek_certified is True:
            return []
        severity: Literal["critical", "warning"] = "critical" if self.required else "warning"
        consequence = (
            "a license requires a TPM, so the report is rejected"
            if self.required
            else "no license requires a TPM, so the report is accepted"
        )
        if verified.ek_certified is None:
            return [
                Finding(
                    EK_MISSING,
                    severity,
                    "the TPM has no endorsement certificate to check against the configured "
                    f"manufacturer CAs (a vTPM often has none); {consequence}",
                )
            ]
        return [
            Finding(
                EK_UNTRUSTED,
                severity,
                f"{verified.ek_cert_problem or 'the EK certificate is not trusted'}; "
                f"{consequence}; add the manufacturer's CA with 'vendor tpm-ca add' if "
                "the TPM is genuine",
            )
        ]

    def finish(self, extra: Mapping[str, Any], head: Head | None, acked: Head | None,
               instance_id: bytes) -> list[Finding]:  # fmt: skip
        """Verify the report's attestation; every finding of this check, in order."""
        if head is None:
            return self.findings
        bundle = extra.get("tpm")
        if bundle is not None and not isinstance(bundle, bytes):
            bundle = b"\x00"  # not bytes: decoding fails as a forged bundle
        ledger_counter = self._last_anchor if self._last_anchor is not None else self._prev
        try:
            verified = verify_attestation(
                bundle,
                head=head.hash,
                pins=self.pins,
                required=self.required or self.genesis_tpm,
                ledger_counter=ledger_counter if bundle else None,
                nonce=report_nonce(instance_id, None if acked is None else acked.hash),
                ek_roots=self.ek_roots,
            )
        except TpmFinding as exc:
            self.findings.append(Finding(exc.code, "critical", str(exc)))
            return self.findings
        if verified is not None:
            self.pins_after = verified.pins
            what = "enrolled the TPM" if verified.enrolled_now else "verified"
            ek = " (EK certified by a configured manufacturer CA)" if verified.ek_certified else ""
            self.findings.append(
                Finding(QUOTE_OK, "info", f"TPM attestation {what}: counter {verified.counter}{ek}")
            )
            self.findings.extend(self._ek_findings(verified))
            if self.new_challenge is not None and verified.pins.ak_name is not None:
                assert bundle is not None
                verdict = judge_credential(
                    self.credential,
                    self._answers,
                    ak_name=verified.pins.ak_name,
                    ek_public=AttestationBundle.from_bytes(bundle).ek_public,
                    required=self.required,
                    new_challenge=self.new_challenge,
                )
                self.credential_after = verdict
                self.findings.extend(verdict.findings)
        return self.findings
