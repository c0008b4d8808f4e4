"""`python -m wsgate` runs the command line, like the `wsgate` script."""

from wsgate.cli import main

raise SystemExit(main())
