"""Offline Lambda runtime images: built from Debian packages for machines without a registry.

``flocid images build`` makes ``flocid.local/lambda/{python:3.13,nodejs:20,provided:al2023}`` with
the contract of AWS's base images; ``local_image_for_runtime`` maps a Lambda runtime id to one.
"""

from flocid.images.build import RECIPES, RUNTIME_IMAGES, local_image_for_runtime

__all__ = ["RECIPES", "RUNTIME_IMAGES", "local_image_for_runtime"]
