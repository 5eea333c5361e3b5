import sys

from dstack.agent.runner import main

sys.exit(main())
