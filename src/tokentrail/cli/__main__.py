"""``python -m tokentrail.cli``: the same as the ``tokentrail`` command."""

from tokentrail.cli.commands import main

main()
