import sys

from tresnet.cli.main import main

sys.exit(main())
