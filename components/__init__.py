"""KFP lightweight components: one per step, each a thin wrapper over one `tuneloop.cycle` call.

The modules here hold the step bodies as plain functions; `component(body, image)` turns one into a
component for the image it will run in, so the image is an argument (`runtime.image`), never an
import-time global. The image already has tuneloop and kfp installed, so nothing is pip-installed
at step start. Heavy imports happen inside the function bodies: each step is a fresh process.
"""

from typing import Callable

from kfp import dsl
from kfp.dsl.python_component import PythonComponent


def component(body: Callable, image: str) -> PythonComponent:
    """The KFP component that runs `body` in `image`."""
    return dsl.component(body, base_image=image, install_kfp_package=False)
