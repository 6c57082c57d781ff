"""`python -m multikpi ...`, as the `multikpi` command; also what `torchrun -m multikpi train CONFIG` runs."""
import sys

from multikpi.cli.main import main

sys.exit(main())
