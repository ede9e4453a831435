"""spotrun: ML jobs on spot GPUs that survive reclaims."""

__version__ = "0.1.0"
