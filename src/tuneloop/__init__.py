"""tuneloop: continuous training for parameter-efficient fine-tuned language models.

The core library is plain Python: no kfp, no Kubernetes, no CLI framework. Components, pipelines
and the CLI are thin edges over it.
"""

__version__ = "0.1.0"
