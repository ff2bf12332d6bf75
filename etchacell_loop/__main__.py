"""``python -m etchacell_loop`` is the ``etchacell`` command."""

from etchacell_loop.cli.app import main

main()
