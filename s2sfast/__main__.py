"""``python -m s2sfast``: the same command as the ``s2sfast`` console script."""

from s2sfast.server.cli import main

raise SystemExit(main())
