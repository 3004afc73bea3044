"""`python -m structprune ...` runs the CLI (also what torchrun launches)."""
from structprune.cli import main

raise SystemExit(main())
