"""The server's TPM set-up at ``server init --tpm auto|require|off``.

:func:`prepare_tpm` probes the TPM (unless ``off``), decides with
:func:`meterbox.tpm.decide_mode`, and on a TPM creates (or adopts) the counter and the
attestation key with a fresh counter authValue. It writes nothing to the data directory:
:func:`write_tpm_config` stores the result in ``tpm.json`` (mode 0600: it holds the
counter's authValue) once the instance is being created, and :meth:`TpmSetup.genesis`
is what the ledger's genesis records. ``require`` without a TPM refuses before anything
is written.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from meterbox._fs import atomic_write
from meterbox.tpm import TpmAnchor, TpmMode, TpmProbe, decide_mode

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


def prepare_tpm(mode: TpmMode, tcti: str) -> TpmSetup:
    probe = None if mode is TpmMode.OFF else _probe(tcti)
    decision = decide_mode(mode, probe)
    if not decision.use_tpm or decision.tcti is None:
        return TpmSetup(mode, None, decision.reason, None, {"tpm": "none"}, None)
    auth = secrets.token_bytes(_AUTH_LEN)
    from meterbox.tpm import TpmDevice

    with TpmDevice(decision.tcti) as device:
        anchor = TpmAnchor.initialise(device, auth)
        return TpmSetup(
            mode, decision.tcti, decision.reason, auth, anchor.identity(), anchor.read()
        )


def write_tpm_config(data: Path, setup: TpmSetup) -> None:
    config = {
        "v": CONFIG_VERSION,
        "mode": setup.mode.value,
        "tcti": setup.tcti,
        "counter_auth": None if setup.counter_auth is None else setup.counter_auth.hex(),
        "identity": setup.identity,
        "counter_at_init": setup.counter,
    }
    atomic_write(data / TPM_CONFIG, (json.dumps(config, indent=1) + "\n").encode())
