import sys

from monai_oct.cli import main

sys.exit(main())
