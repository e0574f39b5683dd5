"""One module per family: vit.py (ViT + DeiT). BEiT, CvT and BiT follow the same shape."""
