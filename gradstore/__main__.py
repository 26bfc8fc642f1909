from gradstore.cli.main import main

raise SystemExit(main())
