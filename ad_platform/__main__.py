import sys

from ad_platform.cli import main

sys.exit(main())
