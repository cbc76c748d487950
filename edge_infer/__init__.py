"""edge-infer: a slim on-device runtime for brain MRI segmentation models.

The runtime never imports torch or the export stage; optional backends import lazily.
"""

__version__ = "0.1.0"
