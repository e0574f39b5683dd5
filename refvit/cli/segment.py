"""`refvit segment`: a semantic segmentation checkpoint's label map as a palette PNG."""

from __future__ import annotations

import sys

import numpy as np

from .common import model_options, out_path, print_json, run_options


def label_palette(num_labels: int) -> np.ndarray:
    """(num_labels, 3) uint8 colours: the PASCAL VOC colour map (label bits spread over R, G, B, high bits first)."""
    labels = np.arange(num_labels)
    colours = np.zeros((num_labels, 3), np.int64)
    for shift in range(7, -1, -1):
        for channel in range(3):
            colours[:, channel] |= ((labels >> (channel + 3 * (7 - shift))) & 1) << shift
    return colours.astype(np.uint8)


def cmd_segment(args) -> int:
    from PIL import Image

    from .. import from_pretrained, load_image
    from ..processing import ImageProcessor

    model = from_pretrained(args.model_dir, dtype=args.dtype, backend=args.backend, revision=args.revision)
    processor = ImageProcessor.from_pretrained(args.model_dir, revision=args.revision)
    if "auxiliary_logits" not in model.architecture.output.FIELDS or \
            not hasattr(processor, "post_process_semantic_segmentation"):
        print(f"refvit segment: {model.architecture.name} with {type(processor).__name__} is not a semantic "
              "segmentation model (e.g. BeitForSemanticSegmentation)", file=sys.stderr)
        return 2
    image = load_image(args.image)
    out = model(**processor(image, return_tensors="np"))
    label_map = processor.post_process_semantic_segmentation(out, target_sizes=[(image.height, image.width)])[0]
    num_labels = out.logits.shape[1]
    if num_labels <= 256:  # a palette PNG: pixel values are the label ids, the palette colours them
        mask = Image.fromarray(label_map.astype(np.uint8), "P")
        mask.putpalette(label_palette(256).ravel().tolist())
    else:
        mask = Image.fromarray(label_palette(num_labels)[label_map], "RGB")
    mask.save(args.out, format="PNG")
    ids, counts = np.unique(label_map, return_counts=True)
    order = np.lexsort((ids, -counts))
    rows = [{"index": int(ids[i]), "label": model.config.id2label.get(int(ids[i]), str(int(ids[i]))),
             "pixels": int(counts[i]), "fraction": float(counts[i] / label_map.size)} for i in order]
    if args.json:
        print_json({"image": args.image, "mask": args.out, "height": image.height, "width": image.width,
                    "labels": rows})
    else:
        print(f"{args.image} -> {args.out} ({image.width}x{image.height}, {len(rows)} labels present)")
        for r in rows:
            print(f"  {r['fraction']:7.2%}  {r['label']}  (class {r['index']}, {r['pixels']} pixels)")
    return 0


def add_segment_parser(sub) -> None:
    p = sub.add_parser("segment", help="segment an image with a semantic segmentation checkpoint (BEiT, "
                       "data2vec-vision): writes a colour-coded label map PNG and prints the label histogram")
    model_options(p)
    p.add_argument("image", help="the image file to segment")
    p.add_argument("--out", type=out_path, default="mask.png", help="where to write the label map (PNG; default "
                   "mask.png)")
    p.add_argument("--json", action="store_true", help="print the histogram as JSON")
    run_options(p)
    p.set_defaults(func=cmd_segment)
