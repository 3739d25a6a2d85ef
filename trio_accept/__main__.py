"""``python -m trio_accept``: the same as the ``trio-accept`` command."""

from ._cli import main

raise SystemExit(main())
