"""`python -m usertwin.cli ...` (what torchrun and accelerate launch start on every process)."""

import sys

from usertwin.cli import main

sys.exit(main())
