"""KFP lightweight components: one per step, each a thin wrapper over one `tuneloop.cycle` call.

Every component runs in the project's image (`TUNELOOP_IMAGE`, read when this package is first
imported), which already has tuneloop and kfp installed, so nothing is pip-installed at step start.
Heavy imports happen inside the function bodies: each step is a fresh process.
"""

import os

from tuneloop import __version__

IMAGE = os.environ.get("TUNELOOP_IMAGE", f"ghcr.io/tuneloop/tuneloop:{__version__}")
