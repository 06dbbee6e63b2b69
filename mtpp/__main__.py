import sys

from mtpp.cli import main

sys.exit(main())
