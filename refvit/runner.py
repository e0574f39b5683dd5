"""The one runner every class shares (`run`: input checks, base model, head) and the strict tensor mapping that
loading uses (`map_tensors`), over the `Architecture` rows of refvit/models (docs/DESIGN.md §1, §2)."""

from __future__ import annotations

from .errors import CheckpointError, name_problems
from .kernels.workspace import FRESH
from .models.architecture import Architecture, CallOptions
from .models.common import Forward, check_pixel_values


def run(model, pixel_values, opts: CallOptions, recorder: dict | None = None) -> dict:
    """The forward of every class (docs/DESIGN.md §2): input checks, the base model, then the head.

    `model` holds what the call runs on (refvit/model.py `Model`: architecture, params, config, kernels, dtype);
    `recorder` is the {checkpoint name: array} dict intermediates are recorded into, or None. One context is built
    for the call; the base model runs under its checkpoint prefix (`deit.`) for head classes. Returns {output field:
    value}. On the Numba backend the context carries a workspace for the fused kernels (refvit/kernels/workspace.py):
    one of the model's own, leased for the call, unless a value would leave the call through it (intermediates
    recorded, hidden states returned) or the head reads hidden states (segmentation, backbones); then every array is
    new. The arithmetic is the same either way.
    """
    kernels = model.kernels
    make_context = getattr(kernels, "context", None)   # an emulated arithmetic (refvit/precision.py) brings its own
    pool = getattr(model, "workspaces", None)
    if make_context is not None or pool is None or not _fusable(kernels):
        return _run(model, pixel_values, opts, recorder, None)      # no fused kernels: each module its own call
    head = model.architecture.head
    if recorder is not None or opts.output_hidden_states or (head is not None and head.reads_hidden_states):
        return _run(model, pixel_values, opts, recorder, FRESH)     # fused kernels, every value a new array
    with pool.lease() as workspace:                                 # fused kernels writing into reused buffers
        return _run(model, pixel_values, opts, recorder, workspace)


def _fusable(kernels) -> bool:
    """Whether a forward on this namespace may run the fused encoder blocks: the Numba backend's, unless one of the
    kernels the blocks stand for was replaced while the blocks themselves were not (a tool's or a test's planted
    kernel must run). A namespace wrapping every kernel alike (timers, call counters) keeps the blocks."""
    if getattr(kernels, "name", None) != "numba":
        return False
    from .kernels import BLOCK_PARTS, get
    own = get("numba")
    blocks = getattr(kernels, "attention_block", None), getattr(kernels, "mlp_block", None)
    if blocks[0] is None or blocks[1] is None:
        return False
    if blocks[0] is not own.attention_block or blocks[1] is not own.mlp_block:
        return True
    return all(getattr(kernels, k, None) is getattr(own, k) for k in BLOCK_PARTS)


def _run(model, pixel_values, opts, recorder, workspace):
    arch, params, cfg, kernels = model.architecture, model.params, model.config, model.kernels
    x = check_pixel_values(pixel_values, cfg.num_channels, model.dtype)
    make_context = getattr(kernels, "context", None)
    ctx = Forward(kernels, cfg, params, recorder, workspace=workspace) if make_context is None else \
        make_context(kernels, cfg, params, recorder)
    if arch.head is None:
        base_ctx = ctx
    else:
        prefix = arch.base_prefix[:-1]
        base_ctx = ctx.at(prefix, params=params if arch.head.base_at_top else params[prefix])
    inputs = arch.base_model.check(arch, cfg, base_ctx.p, x, opts)
    base = arch.base_model.forward(base_ctx, inputs)
    out = dict(base) if arch.head is None else arch.head.forward(ctx, base, inputs)
    out["hidden_states"] = base["hidden_states"] if opts.output_hidden_states else None
    if "attentions" in arch.output.FIELDS:
        out["attentions"] = base.get("attentions") if opts.output_attentions else None
    return out


def strip_or_add_prefix(tensors: dict, arch: Architecture) -> tuple[dict, list, bool]:
    """Make names line up with `arch` like transformers does; returns (tensors, ignored names, base_checkpoint).

    A base model loads from a checkpoint with a head: the prefix is stripped and the head ignored. A head model given
    a base checkpoint gets the prefix added, so that exactly its head is reported missing (transformers would
    initialise it randomly; refvit refuses).
    """
    p = arch.base_prefix
    if arch.is_base and arch.anchor not in tensors and p + arch.anchor in tensors:
        ignored = sorted(k for k in tensors if not k.startswith(p))
        return {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}, ignored, False
    if not arch.is_base and arch.anchor in tensors and p + arch.anchor not in tensors:
        return {p + k: v for k, v in tensors.items()}, [], True
    return tensors, [], False


# ViT/DeiT/BEiT layers, CvT and BiT layers per stage, BEiT's FCN head convs: each one holds tensors of its own
LAYER_COUNT_FIELDS = ("num_hidden_layers", "depth", "depths", "auxiliary_num_convs")


def _check_layer_count(cfg, tensors: dict, arch: Architecture, source: str) -> None:
    """Every layer has at least one tensor: refuse a config asking for more layers than the checkpoint has tensors
    before `arch.shapes` lists them (num_hidden_layers = 10**9 would otherwise build a dict of 10**10 names)."""
    for name in LAYER_COUNT_FIELDS:
        value = getattr(cfg, name, None)
        counts = value if isinstance(value, (tuple, list)) else [value]
        if all(isinstance(c, int) for c in counts) and sum(counts) > len(tensors):
            raise CheckpointError(f"{source} does not match {arch.name} built from its config: {name} = "
                                  f"{value!r} asks for {sum(counts)} layers, but the checkpoint holds only "
                                  f"{len(tensors)} tensors")


def map_tensors(tensors: dict, cfg, arch: Architecture, source: str) -> tuple[dict, list]:
    """Check names and shapes strictly; every missing, unexpected and wrong-shape tensor is reported in one error."""
    tensors, ignored, base_checkpoint = strip_or_add_prefix(arch.before_mapping(tensors), arch)
    _check_layer_count(cfg, tensors, arch, source)
    required = arch.shapes(cfg)
    groups = arch.optional_groups(cfg)
    allowed = dict(required)
    missing = sorted(set(required) - set(tensors))
    for group in groups:
        allowed.update(group)
        present = set(group) & set(tensors)
        if present and present != set(group):
            missing += sorted(set(group) - present)
    unexpected = sorted(set(tensors) - set(allowed))
    wrong = [f"{k}: checkpoint {tuple(tensors[k].shape)}, config expects {shape}"
             for k, shape in allowed.items() if k in tensors and tuple(tensors[k].shape) != tuple(shape)]
    hint = " (this checkpoint holds a base model without this head)" if base_checkpoint else ""
    problems = name_problems((f"missing {len(missing)} tensor(s){hint}", missing),
                             (f"unexpected {len(unexpected)} tensor(s)", unexpected))
    if wrong:
        problems.append(f"wrong shape: {'; '.join(wrong[:20])}")
    if problems:
        raise CheckpointError(f"{source} does not match {arch.name} built from its config: " + " | ".join(problems))
    return tensors, ignored
