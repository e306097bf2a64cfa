"""The site's API key file (``DATA/api-keys.json``, mode 0600) around the pure key ring.

The file holds digests, never secrets. A change is written atomically and made durable
before the ring in memory is replaced, so a key revoked through the admin API is
refused by the very next request and stays revoked after a restart. While the server
runs, only it writes the file (``meterbox server keys`` goes through the admin API);
a stopped server's file is edited by the command line directly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

from meterbox._fs import atomic_write, disk_error
from meterbox.server._core.access import ApiKey, KeyRing, NewKey

KEY_FILE = "api-keys.json"


class KeyStore:
    """The key ring of one data directory, loaded once and rewritten on every change."""

    def __init__(self, path: Path, ring: KeyRing) -> None:
        self.path = path
        self.ring = ring

    @classmethod
    def open(cls, data: Path) -> KeyStore:
        path = data / KEY_FILE
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls(path, KeyRing())
        except (OSError, UnicodeDecodeError) as exc:
            from meterbox.errors import StateError

            raise StateError(
                "The API key file cannot be read",
                expected=f"a readable {path}",
                found=str(getattr(exc, "strerror", None) or exc),
                hint="Run the command as the user the server runs as",
            ) from None
        try:
            doc = json.loads(text)
        except ValueError as exc:
            from meterbox.errors import StateError

            raise StateError(
                "The API key file is damaged",
                expected="JSON as `meterbox server keys` writes it",
                found=f"{path}: {exc}",
                hint="Restore api-keys.json from backup, or remove it and create the keys again",
            ) from None
        return cls(path, KeyRing.from_json(doc))

    def _commit(self, ring: KeyRing) -> None:
        data = json.dumps(ring.to_json(), indent=1, sort_keys=True).encode() + b"\n"
        try:
            atomic_write(self.path, data, mode=0o600)
        except OSError as exc:
            raise disk_error(f"the API key file {self.path} could not be written", exc) from exc
        self.ring = ring

    def create(
        self,
        name: str,
        now: datetime,
        *,
        group: str | None = None,
        features: Sequence[str] | None = None,
        meters: Sequence[str] | None = None,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> NewKey:
        ring, new = self.ring.create(name, now, rng, group=group, features=features, meters=meters)
        self._commit(ring)
        return new

    def revoke(self, ref: str, now: datetime) -> ApiKey:
        ring, key = self.ring.revoke(ref, now)
        if ring is not self.ring:
            self._commit(ring)
        return key


__all__ = ["KEY_FILE", "KeyStore"]
