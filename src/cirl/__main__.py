from cirl.cli import main

raise SystemExit(main())
