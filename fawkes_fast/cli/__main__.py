"""`python -m fawkes_fast.cli ...` is `fawkes-fast ...`."""
import sys

from .main import main

sys.exit(main())
