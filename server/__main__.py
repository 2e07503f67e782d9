from codestral_ls.server.cli import main

raise SystemExit(main())
