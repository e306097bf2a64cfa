"""`python -m meterbox` runs the `meterbox` command."""

from meterbox.cli import main

main()
