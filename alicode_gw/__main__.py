from alicode_gw.cli import main

raise SystemExit(main())
