"""crane_x7_vla: collect, train and deploy Vision-Language-Action policies on the CRANE-X7."""

__version__ = "0.1.0"
