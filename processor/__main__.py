"""``python -m processor`` is the ``edit-processor`` command."""

from processor.cli import main

main()
