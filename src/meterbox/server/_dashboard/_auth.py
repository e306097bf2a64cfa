"""Admin sessions for the site dashboard.

The admin pastes the admin token once; the server answers with a random session id in
an ``HttpOnly; SameSite=Strict`` cookie and keeps the session in memory (a restart logs
everyone out, which is the safe direction). The token itself never appears in a URL,
a cookie or a log. Each session carries its own CSRF token, required in every form POST.

Invariants: the token and CSRF tokens are compared with :func:`hmac.compare_digest`;
sessions are looked up by the SHA-256 of the id, so a timing difference in the lookup
says nothing about a live id; sessions expire after :attr:`Sessions.ttl` seconds idle.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from typing import Final

from meterbox.clock import Clock, SystemClock

COOKIE: Final = "meterbox_session"


@dataclass
class Session:
    csrf: str
    expires: float
    flash: list[tuple[str, str]] = field(default_factory=list)


def _key(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


class Sessions:
    """In-memory admin sessions with an idle timeout."""

    def __init__(
        self,
        admin_token: str,
        *,
        ttl: float = 8 * 3600,
        clock: Clock | None = None,
        max_sessions: int = 256,
    ) -> None:
        self._token = admin_token.encode()
        self.ttl = ttl
        # Idle time is measured on the monotonic clock: setting the wall clock
        # must neither end nor extend a session.
        self._clock: Clock = clock or SystemClock()
        self._max = max_sessions
        self._sessions: dict[str, Session] = {}

    def check_token(self, given: str) -> bool:
        return hmac.compare_digest(given.strip().encode(), self._token)

    def create(self) -> tuple[str, Session]:
        self._expire()
        if len(self._sessions) >= self._max:
            # The oldest session goes first: a flood of logins cannot grow memory.
            oldest = min(self._sessions, key=lambda k: self._sessions[k].expires)
            del self._sessions[oldest]
        sid = secrets.token_urlsafe(32)
        session = Session(
            csrf=secrets.token_urlsafe(32), expires=self._clock.mono_ms() / 1000 + self.ttl
        )
        self._sessions[_key(sid)] = session
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        session = self._sessions.get(_key(sid))
        if session is None:
            return None
        now = self._clock.mono_ms() / 1000
        if session.expires <= now:
            del self._sessions[_key(sid)]
            return None
        session.expires = now + self.ttl
        return session

    def drop(self, sid: str | None) -> None:
        if sid:
            self._sessions.pop(_key(sid), None)

    def _expire(self) -> None:
        now = self._clock.mono_ms() / 1000
        for k in [k for k, s in self._sessions.items() if s.expires <= now]:
            del self._sessions[k]


def csrf_ok(session: Session, given: object) -> bool:
    return isinstance(given, str) and hmac.compare_digest(given.encode(), session.csrf.encode())
