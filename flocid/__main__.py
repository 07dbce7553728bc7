import sys

from flocid.cli import main

sys.exit(main())
