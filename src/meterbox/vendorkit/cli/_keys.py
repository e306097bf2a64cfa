"""`meterbox vendor init` and `meterbox vendor rotate-key`: the vendor's keys."""

from __future__ import annotations

from meterbox.vendorkit import keys as vendor_keys
from meterbox.vendorkit.cli._common import (
    HomeOption,
    JsonOption,
    app,
    cli_errors,
    out,
    print_json,
)


def _keys_json(keys: vendor_keys.VendorKeys, home: HomeOption) -> dict[str, object]:
    return {
        "key_id": keys.current_id.hex(),
        "keys": len(keys.bundle.keys),
        "vendor_pub": str(home / vendor_keys.BUNDLE_FILE),
    }


@app.command("init")
def init_command(home: HomeOption, as_json: JsonOption = False) -> None:
    """Create the vendor's signing and ledger keys and HOME/vendor.pub."""
    with cli_errors():
        keys = vendor_keys.init(home)
        if as_json:
            print_json(_keys_json(keys, home))
            return
        out().print(
            f"Created vendor key {keys.current_id.hex()} in {home}.\n"
            f"Ship {home / vendor_keys.BUNDLE_FILE} with your application; "
            f"keep {home / vendor_keys.KEYS_DIR} private and backed up."
        )


@app.command("rotate-key")
def rotate_command(home: HomeOption, as_json: JsonOption = False) -> None:
    """Add a new key pair and make it current; old keys keep verifying old documents."""
    with cli_errors():
        keys = vendor_keys.rotate(home)
        if as_json:
            print_json(_keys_json(keys, home))
            return
        out().print(
            f"New current vendor key {keys.current_id.hex()} "
            f"({len(keys.bundle.keys)} keys in total). Distribute the updated vendor.pub."
        )
