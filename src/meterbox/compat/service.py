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
  machine only. With interval 0 it is node-locked: the first ``MaxNoOfMachines``
  distinct machine codes activate (``0`` unlimited), codes the license lists in
  ``allowed_machines`` always do (:mod:`meterbox.compat.rules`).
- ``SignMethod`` 0 (LinqSign, the .NET SDK's default) is not served: it is
  answered with the documented "SignMethod=1 is needed" messages.
- ``key/getkey`` lists node-locked activations and every live floating seat.
- ``data/Increment…``/``Decrement…`` change one data object by ``IntValue``
  (0 to Int32 max), honouring ``Bound`` when ``EnableBound``.
"""

from __future__ import annotations

import logging
from typing import Any

from meterbox.clock import Clock
from meterbox.compat.backend import ActivatedMachine, CryptolensBackend, CryptolensLicenseView
from meterbox.compat.errors import (
    SIGN_METHOD_FLOATING_MESSAGE,
    CryptolensRequestError,
    DeactivationNotAllowed,
    LicenseKeyBlocked,
    NotFloating,
    SignMethodRequired,
    UnknownLicenseKey,
    wire_message,
)
from meterbox.compat.licensekey import metadata_object, sign_license
from meterbox.compat.signer import CryptolensSigner
from meterbox.compat.wire import (
    INT32_MAX,
    INT32_MIN,
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

    @staticmethod
    def _license_ref(form: Form) -> tuple[int, str]:
        """ProductId and Key, validated (the lookup comes after every other field)."""
        product_id = form.integer("ProductId", low=0, high=INT32_MAX)
        key = form.text("Key", max_chars=form.limits.max_key_chars, required=True)
        return product_id, key

    async def _license(self, ref: tuple[int, str]) -> CryptolensLicenseView:
        product_id, key = ref
        view = await self._backend.find_license(product_id, key)
        if view is None:
            raise UnknownLicenseKey(
                "Unable to find the license key",
                expected=f"a license on this server with ProductId={product_id} and this key",
                found="none",
                hint="Check ProductId and the key, or install the license file on the server",
            )
        return view

    @staticmethod
    def _signing_fields(form: Form) -> tuple[int, bool]:
        """SignMethod and metadata; FieldsToReturn and Sign are validated and ignored."""
        form.integer("FieldsToReturn", default=0, low=INT32_MIN, high=INT32_MAX)
        form.boolean("Sign", default=True)
        return form.sign_method(), form.boolean("metadata")

    async def _signed(
        self,
        view: CryptolensLicenseView,
        machines: list[ActivatedMachine],
        metadata: bool,
        used_floating: int,
    ) -> Reply:
        now = self._now()
        objects = await self._backend.data_objects(view.license_id)
        signed = sign_license(self._signer, view, machines, objects, now)
        reply = _ok(licenseKey=signed.license_key, signature=signed.signature)
        if metadata:
            reply["metadata"] = metadata_object(
                self._signer, view, len(machines), used_floating, now
            )
        return reply

    @staticmethod
    def _require_sign_method(form: Form, sign_method: int, floating: bool) -> None:
        # SignMethod 0 (LinqSign, the .NET SDK's default) signs a .NET object
        # serialisation that only the Cryptolens cloud produces; it is not served.
        if sign_method == 1:
            return
        if floating:
            raise SignMethodRequired(SIGN_METHOD_FLOATING_MESSAGE)
        raise SignMethodRequired(
            "License server error: SignMethod=1 is needed to sign the license offline",
            expected="SignMethod=1 (StringSign)",
            found=f"SignMethod={form.raw('SignMethod')}"
            if form.raw("SignMethod")
            else "no SignMethod (the legacy LinqSign)",
            hint="Set SignMethod to StringSign in the client (ActivateModel.SignMethod)",
        )

    @staticmethod
    def _check_blocked(view: CryptolensLicenseView) -> None:
        if view.block:
            raise LicenseKeyBlocked(
                "The license key is blocked",
                expected="an unblocked license",
                found="Block=true",
                hint="The vendor must issue an unblocked license",
            )

    async def _activate(self, form: Form, ip: str) -> Reply:
        limits = form.limits
        # Every field is validated before anything is looked up or changed.
        interval = form.integer(
            "FloatingTimeInterval", default=0, high=limits.max_floating_interval_s
        )
        floating = interval > 0
        requested_overdraft = form.integer("MaxOverdraft", default=0, high=limits.max_overdraft)
        # An empty MachineCode is the Node and .NET SDKs' default; it is a code like any other.
        code = form.text("MachineCode", max_chars=limits.max_machine_code_chars)
        friendly = form.friendly_name()
        sign_method, metadata = self._signing_fields(form)
        ref = self._license_ref(form)
        self._require_sign_method(form, sign_method, floating)
        view = await self._license(ref)
        self._check_blocked(view)
        if floating:
            if not view.floating:
                raise NotFloating(
                    "This license has no floating seats",
                    expected="FloatingTimeInterval=0 (node-locked activation) for this license",
                    found=f"FloatingTimeInterval={interval}",
                    hint="Activate node-locked, or ask the vendor for a floating license",
                )
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
            return await self._signed(view, [machine], metadata, used)
        machines = await self._backend.nodelocked_activate(view.license_id, code, friendly, ip)
        used = len(await self._backend.floating_live_machines(view.license_id))
        return await self._signed(view, machines, metadata, used)

    async def _getkey(self, form: Form, ip: str) -> Reply:
        interval = form.integer(
            "FloatingTimeInterval", default=0, high=form.limits.max_floating_interval_s
        )
        sign_method, metadata = self._signing_fields(form)
        ref = self._license_ref(form)
        self._require_sign_method(form, sign_method, interval > 0)
        view = await self._license(ref)
        floating = await self._backend.floating_live_machines(view.license_id)
        nodelocked = await self._backend.nodelocked_machines(view.license_id)
        return await self._signed(view, nodelocked + floating, metadata, len(floating))

    async def _deactivate(self, form: Form, ip: str) -> Reply:
        code = form.text("MachineCode", max_chars=form.limits.max_machine_code_chars)
        floating = form.boolean("Floating")
        ref = self._license_ref(form)
        view = await self._license(ref)
        # Deactivation is idempotent: a machine without a seat is already deactivated.
        if floating:
            await self._backend.floating_deactivate(view.license_id, code)
            return _ok()
        if not view.allow_deactivation:
            active = {
                m.machine_code for m in await self._backend.nodelocked_machines(view.license_id)
            }
            if code in active:
                raise DeactivationNotAllowed(
                    "This license does not allow deactivating a node-locked machine",
                    expected="a license issued with deactivation allowed",
                    found="allow_deactivation=false",
                    hint="The machine keeps its activation; ask the vendor to free the slot",
                )
            return _ok()
        await self._backend.nodelocked_deactivate(view.license_id, code)
        return _ok()

    async def _change(self, form: Form, sign: int) -> Reply:
        object_id = form.integer("Id", default=0, high=INT32_MAX)
        name = form.text("Name", max_chars=form.limits.max_name_chars * 4)
        # IntValue is an Int32 in the .NET SDK; the result is kept inside Int32 too.
        amount = form.integer("IntValue", default=0, high=INT32_MAX)
        enable_bound = form.boolean("EnableBound")
        bound = form.integer("Bound", default=0, low=-INT64_MAX, high=INT64_MAX)
        if object_id == 0 and not name:
            raise CryptolensRequestError(
                "no data object named",
                expected="Id (non-zero) or Name",
                found="neither",
            )
        ref = self._license_ref(form)
        view = await self._license(ref)
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
        ref = self._license_ref(form)
        view = await self._license(ref)
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
