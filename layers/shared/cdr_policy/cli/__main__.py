"""``python -m cdr_policy.cli``: the same as the ``cdr-policy`` command."""

from cdr_policy.cli import main

raise SystemExit(main())
