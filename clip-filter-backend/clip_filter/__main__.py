from clip_filter.cli import main
import sys

sys.exit(main())
