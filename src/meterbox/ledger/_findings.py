"""Findings: what report and ledger verification found, with stable codes.

Codes are part of the public interface (the vendor's JSON output, the store, the
dashboards): never rename one, only add. ``critical`` findings reject a report;
``warning`` findings accept it with findings; ``info`` is context.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

Severity = Literal["critical", "warning", "info"]


@dataclass(frozen=True, slots=True)
class Finding:
    code: str
    severity: Severity
    message: str
    seq: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
        }
        if self.seq is not None:
            out["seq"] = self.seq
        return out


# Report container.
REPORT_MALFORMED: Final = "report.malformed"
REPORT_UNKNOWN_VERSION: Final = "report.unknown_version"
REPORT_WRONG_VENDOR_KEY: Final = "report.wrong_vendor_key"
REPORT_TRUNCATED: Final = "report.truncated"
REPORT_SIGNATURE_INVALID: Final = "report.signature_invalid"
REPORT_INSTANCE_KEY_MISMATCH: Final = "report.instance_key_mismatch"
# Single records.
RECORD_MALFORMED: Final = "record.malformed"
RECORD_UNKNOWN_VERSION: Final = "record.unknown_version"
RECORD_UNAUTHENTIC: Final = "record.unauthentic"
RECORD_MISSING: Final = "record.missing"
RECORD_DUPLICATE: Final = "record.duplicate"
RECORD_OUT_OF_ORDER: Final = "record.out_of_order"
# Epochs (key schedule).
EPOCH_UNOPENABLE: Final = "epoch.unopenable"
EPOCH_FOREIGN: Final = "epoch.foreign_instance"
EPOCH_FORGED: Final = "epoch.forged"
EPOCH_GAP: Final = "epoch.gap"
EPOCH_MISSING: Final = "epoch.missing"
# The ledger as a whole.
LEDGER_TRUNCATED: Final = "ledger.truncated"
LEDGER_HEAD_MISMATCH: Final = "ledger.head_mismatch"
LEDGER_ROLLBACK: Final = "ledger.rollback"
LEDGER_FORK: Final = "ledger.fork"
LEDGER_UNANCHORED: Final = "ledger.unanchored"
LEDGER_RECOVERED: Final = "ledger.recovered"
#: A RECOVERY record saying the cut removed records the server had acknowledged.
LEDGER_ACKNOWLEDGED_LOST: Final = "ledger.acknowledged_lost"
LEDGER_CHECKPOINT_MISMATCH: Final = "ledger.checkpoint_mismatch"
#: A LEDGER_SHORTENED record: the ledger did not reach the batch its key state named.
LEDGER_SHORTENED: Final = "ledger.shortened"
#: A LEDGER_SHORTENED record of reason ``key_behind``: a saved key state was put back, so
#: the ledger's end after it is vouched for by nothing (critical, like a shortened one).
LEDGER_KEY_STATE_BEHIND: Final = "ledger.key_state_behind"
# Batches (record version 2).
BATCH_FORGED: Final = "batch.forged"
#: A STATE_REBUILT record: a cache file did not match the ledger at the server's open
#: (critical when it claimed less than the ledger, else warning).
STATE_REBUILT: Final = "state.rebuilt"
