"""medattn: 3D medical image segmentation that keeps working when the scanner changes."""

__version__ = "0.1.0"
