"""``python -m servewise.bench ...`` is ``servewise bench ...``."""

from servewise.bench.cli import main

raise SystemExit(main())
