"""Pure decisions around the TPM: whether to use one, and what a counter value at open means.

:func:`decide_mode` turns ``--tpm auto|require|off`` and the result of probing for a TPM
into "use this TPM" or "run without one", or refuses. :func:`judge_counter` compares the
counter value a ledger last committed to with the TPM's; :func:`judge_identity` compares
the TPM identity recorded at init with the one found now. Both return verdicts rather
than raising, because a rollback at open is recorded in the ledger and reported, not a
reason to refuse to run.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from meterbox.errors import ConfigError, FormatError

#: Where a TPM is looked for by default, and the handles meterbox uses on it.
DEFAULT_TCTI: Final = "device:/dev/tpmrm0"
DEFAULT_NV_INDEX: Final = 0x01004D42
DEFAULT_AK_HANDLE: Final = 0x81004D42


class TpmMode(enum.StrEnum):
    AUTO = "auto"
    REQUIRE = "require"
    OFF = "off"

    @classmethod
    def parse(cls, text: str) -> TpmMode:
        try:
            return cls(text.strip().lower())
        except ValueError:
            raise ConfigError(
                "unknown TPM mode",
                expected="auto, require or off",
                found=repr(text)[:40],
                hint="pass --tpm auto (use a TPM when present), require or off",
            ) from None


@dataclass(frozen=True)
class TpmProbe:
    """What looking for a TPM found: ``found`` with the TCTI that answered, or why not."""

    tcti: str
    found: bool
    detail: str


@dataclass(frozen=True)
class TpmDecision:
    use_tpm: bool
    tcti: str | None
    reason: str


def decide_mode(mode: TpmMode, probe: TpmProbe | None) -> TpmDecision:
    """Decide from the mode and the probe (``None`` when ``off`` made probing pointless)."""
    if mode is TpmMode.OFF:
        return TpmDecision(False, None, "TPM anchoring is off (--tpm off)")
    if probe is not None and probe.found:
        return TpmDecision(True, probe.tcti, f"TPM found at {probe.tcti}")
    detail = probe.detail if probe is not None else "no TPM was probed"
    if mode is TpmMode.REQUIRE:
        raise ConfigError(
            "a TPM is required but none answered",
            expected="a TPM 2.0 reachable through " + (probe.tcti if probe else "a TCTI"),
            found=detail,
            hint="enable the (v)TPM (docs/adr/0011-tpm-anchor.md), check permissions on "
            "/dev/tpmrm0, or pass --tpm auto to run without one",
        )
    return TpmDecision(False, None, f"no TPM ({detail}); running without an anchor")


class CounterVerdict(enum.StrEnum):
    IN_STEP = "in_step"
    """The TPM holds exactly the value the ledger last committed to."""
    RESYNC = "resync"
    """The TPM advanced for a batch that never committed (a crash in between): the
    ledger records the TPM's value and carries on."""
    ROLLBACK = "rollback"
    """The TPM is ahead of the ledger by more than a pending advance: this directory
    is older than state the TPM has seen."""
    AHEAD = "ahead"
    """The ledger committed to a value this TPM never reached: the directory was made on
    another TPM or the counter index was replaced."""


def judge_counter(recorded: int, pending: int | None, tpm_value: int) -> CounterVerdict:
    """Judge the TPM counter found at open against the ledger's last committed value.

    ``pending`` is the value of an advance the ledger announced (durably, before asking
    the TPM) but did not commit. A writer advances in that order, so after a crash the
    TPM is either at ``recorded`` or at ``pending``; anything else did not come from
    this directory's own history.
    """
    if tpm_value == recorded:
        return CounterVerdict.IN_STEP
    if pending is not None and tpm_value == pending:
        return CounterVerdict.RESYNC
    if tpm_value > recorded:
        return CounterVerdict.ROLLBACK
    return CounterVerdict.AHEAD


IDENTITY_KEYS = ("ek_name", "ak_name", "nv_name")


def judge_identity(recorded: Mapping[str, object], current: Mapping[str, object]) -> list[str]:
    """The identity fields (of :data:`IDENTITY_KEYS`) that differ: empty means the same TPM."""
    for which, value in (("recorded", recorded), ("current", current)):
        missing = [k for k in IDENTITY_KEYS if not isinstance(value.get(k), str)]
        if missing:
            raise FormatError(
                f"{which} TPM identity is incomplete",
                expected="hex strings for " + ", ".join(IDENTITY_KEYS),
                found="missing " + ", ".join(missing),
                hint="the identity must come from TpmAnchor.identity()",
            )
    return [k for k in IDENTITY_KEYS if recorded[k] != current[k]]
