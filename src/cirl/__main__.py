from cirl.orchestration.cli import main

raise SystemExit(main())
