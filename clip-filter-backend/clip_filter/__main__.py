import sys

from clip_filter.cli import main

sys.exit(main())
