"""The site's seat options file, read from ``DATA/options.toml`` (absent: no rules).

Read at start (a bad file refuses the start) and again on ``meterbox server reload``
(``POST /v1/admin/options/reload``) or SIGHUP; a reload that finds a bad file keeps the
rules in force and says why, so a typo never drops every reservation.
"""

from __future__ import annotations

from pathlib import Path

from meterbox.errors import ConfigError
from meterbox.server._core.options import SeatOptions, parse_options

OPTIONS_FILE = "options.toml"


def read_options(data: Path) -> SeatOptions:
    path = data / OPTIONS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return SeatOptions()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            "The options file cannot be read",
            expected=f"a readable UTF-8 file at {path}",
            found=str(getattr(exc, "strerror", None) or exc),
            hint="Check the file's permissions, or remove it to run without seat options",
        ) from None
    return parse_options(text, str(path))


__all__ = ["OPTIONS_FILE", "read_options"]
