"""personalize: which of two treatments is this patient more likely to respond to?"""

__version__ = "0.1.0"
