import sys

from nextab.cli import main

sys.exit(main())
