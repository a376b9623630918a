"""harmoq-deploy: low-bit post-training quantization and deployment of super-resolution networks."""

__version__ = "0.1.0"
