from pqrun.cli import main

raise SystemExit(main())
