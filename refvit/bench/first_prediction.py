"""Time to first prediction, as one fresh process sees it: import, load a save_pretrained directory, predict once.

Run by `refvit bench --startup` as a script, never imported (so that importing refvit is part of what is timed):
    python -P first_prediction.py KIND MODEL_DIR ARCHITECTURE SIDE      KIND: refvit | torch
Prints one JSON line: import_s, load_s, forward_s, in_process_s, predicted_at (time.time() at the prediction),
rss_after_import_mib, peak_rss_mib, top_class.
"""

import json
import resource
import sys
import time


def rss(field: str) -> int:
    """Bytes: /proc/self/status's VmHWM (peak resident set) or VmRSS (now); else getrusage's peak."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main(kind: str, model_dir: str, arch: str, side: int) -> None:
    t0 = time.perf_counter()
    if kind == "refvit":
        import refvit
    else:
        import torch
        import transformers
    t1 = time.perf_counter()
    rss_import = rss("VmRSS")
    if kind == "refvit":
        model = refvit.from_pretrained(model_dir)
    else:
        model = getattr(transformers, arch).from_pretrained(model_dir).eval()
    t2 = time.perf_counter()
    x = __import__("numpy").random.default_rng(1).standard_normal((1, 3, side, side)).astype("float32")
    if kind == "refvit":
        logits = model(x).logits[0]
    else:
        with torch.inference_mode():
            logits = model(pixel_values=torch.from_numpy(x)).logits[0]
    t3 = time.perf_counter()
    predicted_at = time.time()
    print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "forward_s": t3 - t2, "in_process_s": t3 - t0,
                      "predicted_at": predicted_at,
                      "rss_after_import_mib": rss_import / 2 ** 20, "peak_rss_mib": rss("VmHWM") / 2 ** 20,
                      "top_class": int(logits.argmax())}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
