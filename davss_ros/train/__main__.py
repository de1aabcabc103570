"""``python -m davss_ros.train`` (and ``torchrun ... -m davss_ros.train``) = ``davss train``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
