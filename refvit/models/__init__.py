"""One module per family: vit.py (ViT + DeiT), beit.py (BEiT + data2vec-vision), cvt.py, bit.py; common.py holds the
forward context and the pieces they share (docs/DESIGN.md §2, §3)."""
