"""The ``etchacell`` command line: thin Typer commands over library functions."""

import logging

# panoptes-client calls logging.basicConfig(INFO) when imported, which would print every library's
# INFO chatter before the CLI has set up logging. A root handler present first makes that call a
# no-op; cli.app replaces it (basicConfig(force=True)) once the options are known.
logging.getLogger().addHandler(logging.NullHandler())
