"""``python -m quanttrain.trainer``: the entry point that trainer pods run (see :mod:`.entrypoint`)."""

import sys

from quanttrain.trainer.entrypoint import main

if __name__ == "__main__":
    sys.exit(main())
