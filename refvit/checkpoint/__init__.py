"""Reading checkpoints written by transformers / torch, without torch.

- `read_safetensors` / `write_safetensors`: the safetensors format, memory-mapped with NumPy.
- `read_torch_bin`: a `torch.save(state_dict)` zip archive, through an allowlist pickle interpreter.
- `load_state_dict`: a `save_pretrained` directory (single file or sharded index).
"""

from refvit.checkpoint.directory import load_state_dict
from refvit.checkpoint.safetensors import read_safetensors, read_safetensors_metadata, write_safetensors
from refvit.checkpoint.torch_bin import read_torch_bin

__all__ = [
    "load_state_dict",
    "read_safetensors",
    "read_safetensors_metadata",
    "read_torch_bin",
    "write_safetensors",
]
