"""The ``etchacell`` command line: thin Typer commands over library functions."""
