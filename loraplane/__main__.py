import sys

from loraplane.cli import main

sys.exit(main())
