"""KFP lightweight components: one per step, each a thin wrapper over one `tuneloop.cycle` call.

The modules here hold the step bodies as plain functions; `pipelines/steps.py` turns each into a
component for the image it runs in (`runtime.image`, never an import-time global) and gives it its
pod settings. The image already has tuneloop and kfp installed, so nothing is pip-installed at step
start. Heavy imports happen inside the function bodies: each step is a fresh process.
"""
