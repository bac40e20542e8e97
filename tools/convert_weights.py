#!/usr/bin/env python
"""Convert a PyTorch Stable Diffusion or Wan model into a jaxvideo (Flax) model folder.

The same program as `jaxvideo convert SRC DST ...` (jaxvideo.convert.cli); `--help` lists the
options.
"""

import sys

from jaxvideo.convert.cli import main

if __name__ == "__main__":
    sys.exit(main())
