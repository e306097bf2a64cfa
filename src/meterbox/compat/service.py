"""The Cryptolens Web API 3 calls, as a transport-free service.

``CryptolensService.handle(path, body, content_type, ip)`` takes the raw
request and returns the JSON-ready reply dict; the HTTP shell in
:mod:`meterbox.compat.app` only moves bytes. Every reply has an integer
``result`` (0 success, 1 error) and a ``message``; a request is parsed and
validated in full before the backend is asked anything, so a malformed,
unknown or oversized request changes nothing.

Semantics (see ``docs/spec/cryptolens-compat.md`` for the full table):

- ``key/activate`` with ``FloatingTimeInterval > 0`` is floating: the backend
  renews this machine's lease or takes a regular seat, then an overdraft seat
  (``MaxOverdraft``, capped by the license's overdraft); the reply lists this
  machine only. With interval 0 it is node-locked: only machines the license
  lists in ``allowed_machines`` may activate.
- ``key/getkey`` lists node-locked activations and every live floating seat.
- ``data/Increment…``/``Decrement…`` change one data object by ``IntValue``
  (never negative), honouring ``Bound`` when ``EnableBound``.
"""

from __future__ import annotations

import logging
from typing import Any

from meterbox.clock import Clock
from meterbox.compat.backend import ActivatedMachine, CryptolensBackend, CryptolensLicenseView
from meterbox.compat.errors import (
    SIGN_METHOD_FLOATING_MESSAGE,
    CryptolensRequestError,
    LicenseKeyBlocked,
    MachineNotAllowed,
    SignMethodRequired,
    UnknownLicenseKey,
    wire_message,
)
from meterbox.compat.licensekey import metadata_object, sign_license
from meterbox.compat.signer import CryptolensSigner
from meterbox.compat.wire import (
    INT32_MAX,
    INT64_MAX,
    CryptolensLimitsConfig,
    Form,
    normalise_method,
    parse_form,
)
from meterbox.errors import MeterboxError

__all__ = ["CryptolensService", "Reply"]

Reply = dict[str, Any]
_FORM_TYPE = "application/x-www-form-urlencoded"
_log = logging.getLogger(__name__)


def _ok(**extra: Any) -> Reply:
    return {"result": 0, "message": "", **extra}


def _error(message: str) -> Reply:
    return {"result": 1, "message": message}


class CryptolensService:
    def __init__(
        self,
        backend: CryptolensBackend,
        signer: CryptolensSigner,
        clock: Clock,
        limits: CryptolensLimitsConfig | None = None,
    ) -> None:
        self._backend = backend
        self._signer = signer
        self._clock = clock
        self.limits = limits or CryptolensLimitsConfig()

    async def handle(
        self, method: str, path: str, body: bytes, content_type: str, ip: str
    ) -> Reply:
        """Answer one request. Never raises for anything a client can send."""
        try:
            return await self._dispatch(method, path, body, content_type, ip)
        except MeterboxError as exc:
            return _error(wire_message(exc))
        except Exception:  # noqa: BLE001 - a backend fault must still get a result-1 reply
            _log.exception("Cryptolens-compatible request failed: %s", path[:100])
            return _error(
                "License server error: the request could not be completed. "
                "Nothing was changed by this server's API layer; see the server log."
            )

    async def _dispatch(
        self, method: str, path: str, body: bytes, content_type: str, ip: str
    ) -> Reply:
        if method != "POST":
            raise CryptolensRequestError(
                "wrong HTTP method", expected="POST", found=method[:16], hint="the SDKs always POST"
            )
        name = normalise_method(path)
        media = content_type.split(";", 1)[0].strip().lower()
        if media not in {"", _FORM_TYPE}:
            raise CryptolensRequestError(
                "wrong content type", expected=_FORM_TYPE, found=repr(content_type[:60])
            )
        form = parse_form(body, self.limits)
        handler = {
            "key/activate": self._activate,
            "key/getkey": self._getkey,
            "key/deactivate": self._deactivate,
            "data/incrementintvaluetokey": self._increment,
            "data/decrementintvaluetokey": self._decrement,
            "data/listdataobjectstokey": self._list_data_objects,
        }[name]
        return await handler(form, ip)

    def _now(self) -> int:
        return self._clock.wall_ms() // 1000

    async def _license(self, form: Form) -> CryptolensLicenseView:
        product_id = form.integer("ProductId", low=0, high=INT32_MAX)
        key = form.text("Key", max_chars=form.limits.max_key_chars, required=True)
        view = await self._backend.find_license(product_id, key)
        if view is None:
            raise UnknownLicenseKey(
                "Unable to find the license key",
                expected=f"a license on this server with ProductId={product_id} and this key",
                found="none",
                hint="Check ProductId and the key, or install the license file on the server",
            )
        return view

    async def _signed(
        self,
        view: CryptolensLicenseView,
        machines: list[ActivatedMachine],
        form: Form,
        used_floating: int,
    ) -> Reply:
        now = self._now()
        objects = await self._backend.data_objects(view.license_id)
        signed = sign_license(self._signer, view, machines, objects, now)
        reply = _ok(licenseKey=signed.license_key, signature=signed.signature)
        if form.boolean("metadata"):
            reply["metadata"] = metadata_object(
                self._signer, view, len(machines), used_floating, now
            )
        return reply

    @staticmethod
    def _require_sign_method(form: Form, floating: bool) -> None:
        if form.sign_method() == 1:
            return
        if floating:
            raise SignMethodRequired(SIGN_METHOD_FLOATING_MESSAGE)
        raise SignMethodRequired(
            "License server error: SignMethod=1 is needed to sign the license offline",
            expected="SignMethod=1 (StringSign)",
            found=f"SignMethod={form.raw('SignMethod') or 'absent'}",
            hint="Set SignMethod to StringSign in the client",
        )

    async def _activate(self, form: Form, ip: str) -> Reply:
        limits = form.limits
        interval = form.integer(
            "FloatingTimeInterval", default=0, high=limits.max_floating_interval_s
        )
        floating = interval > 0
        self._require_sign_method(form, floating)
        requested_overdraft = form.integer("MaxOverdraft", default=0, high=limits.max_overdraft)
        code = form.text("MachineCode", max_chars=limits.max_machine_code_chars, required=True)
        friendly = form.friendly_name()
        view = await self._license(form)
        if view.block:
            raise LicenseKeyBlocked(
                "The license key is blocked",
                expected="an unblocked license",
                found="Block=true",
                hint="The vendor must issue an unblocked license",
            )
        if floating:
            overdraft = min(requested_overdraft, view.max_overdraft)
            machine = await self._backend.floating_activate(
                view.license_id,
                code,
                friendly_name=friendly,
                ip=ip,
                interval_s=interval,
                max_overdraft=overdraft,
            )
            used = len(await self._backend.floating_live_machines(view.license_id))
            return await self._signed(view, [machine], form, used)
        if code not in view.allowed_machines:
            raise MachineNotAllowed(
                "machine is not among the license's allowed machines",
                expected="a machine code listed in the license",
                found=code[:80],
            )
        machines = await self._backend.nodelocked_activate(view.license_id, code, friendly, ip)
        used = len(await self._backend.floating_live_machines(view.license_id))
        return await self._signed(view, machines, form, used)

    async def _getkey(self, form: Form, ip: str) -> Reply:
        interval = form.integer(
            "FloatingTimeInterval", default=0, high=form.limits.max_floating_interval_s
        )
        self._require_sign_method(form, interval > 0)
        view = await self._license(form)
        floating = await self._backend.floating_live_machines(view.license_id)
        nodelocked = await self._backend.nodelocked_machines(view.license_id)
        return await self._signed(view, nodelocked + floating, form, len(floating))

    async def _deactivate(self, form: Form, ip: str) -> Reply:
        code = form.text("MachineCode", max_chars=form.limits.max_machine_code_chars, required=True)
        floating = form.boolean("Floating")
        view = await self._license(form)
        # Deactivation is idempotent: a machine without a seat is already deactivated.
        if floating:
            await self._backend.floating_deactivate(view.license_id, code)
        else:
            await self._backend.nodelocked_deactivate(view.license_id, code)
        return _ok()

    async def _change(self, form: Form, sign: int) -> Reply:
        object_id = form.integer("Id", default=0, high=INT64_MAX)
        name = form.text("Name", max_chars=form.limits.max_name_chars * 4)
        amount = form.integer("IntValue", default=0, high=INT64_MAX)
        enable_bound = form.boolean("EnableBound")
        bound = form.integer("Bound", default=0, low=-INT64_MAX, high=INT64_MAX)
        if object_id == 0 and not name:
            raise CryptolensRequestError(
                "no data object named",
                expected="Id (non-zero) or Name",
                found="neither",
            )
        view = await self._license(form)
        await self._backend.change_data_object(
            view.license_id, object_id, name, sign * amount, bound if enable_bound else None
        )
        return _ok()

    async def _increment(self, form: Form, ip: str) -> Reply:
        return await self._change(form, +1)

    async def _decrement(self, form: Form, ip: str) -> Reply:
        return await self._change(form, -1)

    async def _list_data_objects(self, form: Form, ip: str) -> Reply:
        contains = form.text("Contains", max_chars=form.limits.max_value_chars)
        view = await self._license(form)
        objects = await self._backend.data_objects(view.license_id)
        return _ok(
            dataObjects=[
                {
                    "id": o.id,
                    "name": o.name,
                    "stringValue": o.string_value,
                    "intValue": o.int_value,
                }
                for o in objects
                if contains in o.name
            ]
        )
