"""Vendor documents imported on one node, handed to every node through etcd.

An operator imports a top-up or a license notice (suspend, resume, revoke) on one node;
the whole cluster must follow: a suspended license must not keep granting on the other
nodes, and every node's engine must know a top-up's units (its local count of usage is
checked against the limit plus the top-ups it knows). The importing node publishes the
signed document, as imported, under::

    /meterbox/<lic>/imports/topup/<topup_id>
    /meterbox/<lic>/imports/notice/<sequence:012d>-<notice_id>

(no lease: a document stays for nodes that join or come back later). Every node reads
the prefix once per housekeeping round and imports, in key order (notices by sequence),
each document it has not applied, through the same path as an operator's import: the
vendor's signature is verified again, so whoever can write to etcd can at most hand a
node a document the vendor signed for that license, which importing twice leaves as it
was (a top-up counts once by its id, cluster-wide as well: ADR 0032; a notice whose
sequence is not above the license's last one changes nothing).
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from meterbox.server._cluster._etcd import Etcd, EtcdDown

log = logging.getLogger("meterbox.server.cluster")

ROOT = "/meterbox/"

Kind = Literal["topup", "notice"]


def _seg(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def import_key(license_id: str, kind: Kind, doc_id: str, sequence: int = 0) -> str:
    """The etcd key of one imported document (notices ordered by their sequence)."""
    name = f"{sequence:012d}-{_seg(doc_id)}" if kind == "notice" else _seg(doc_id)
    return f"{ROOT}{_seg(license_id)}/imports/{kind}/{name}"


@dataclass(frozen=True)
class Published:
    """One document as published: its key's parts and the signed bytes."""

    license_id: str
    kind: Kind
    doc_id: str
    sequence: int
    blob: bytes


def parse_import_key(key: str) -> tuple[str, Kind, str, int] | None:
    """(license, kind, id, sequence) of an import key; None for anything else."""
    if not key.startswith(ROOT):
        return None
    parts = key[len(ROOT) :].split("/")
    if len(parts) != 4 or parts[1] != "imports" or parts[2] not in ("topup", "notice"):
        return None
    license_id = urllib.parse.unquote(parts[0])
    kind: Kind = "topup" if parts[2] == "topup" else "notice"
    name = parts[3]
    if kind == "topup":
        return (license_id, kind, urllib.parse.unquote(name), 0) if name else None
    seq_text, sep, doc = name.partition("-")
    if not sep or not doc or len(seq_text) != 12 or not seq_text.isdigit():
        return None
    return license_id, kind, urllib.parse.unquote(doc), int(seq_text)


class ClusterImports:
    """Publish and read imported documents (blocking: run in a worker thread)."""

    def __init__(self, etcd: Etcd) -> None:
        self.etcd = etcd

    def publish(
        self, license_id: str, kind: Kind, doc_id: str, blob: bytes, sequence: int = 0
    ) -> bool:
        """Put the document unless it is there already; whether this call created it."""
        return self.etcd.create(import_key(license_id, kind, doc_id, sequence), blob, 0)

    def published(self, license_ids: Iterable[str]) -> list[Published]:
        """Every document published for ``license_ids``, in key order; raises EtcdDown."""
        out = []
        for lic in license_ids:
            for kv in self.etcd.range_prefix(f"{ROOT}{_seg(lic)}/imports/"):
                parsed = parse_import_key(kv.key)
                if parsed is None:
                    log.warning("ignored an etcd key under imports/: %r", kv.key[:200])
                    continue
                out.append(Published(*parsed, blob=kv.value))
        return sorted(out, key=lambda p: (p.license_id, p.kind, p.sequence, p.doc_id))


__all__ = ["ClusterImports", "EtcdDown", "Published", "import_key", "parse_import_key"]
