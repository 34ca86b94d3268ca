"""`patch`/`unpatch` and friends: TALAN blocks attached to a HF model by removable hooks (SPEC §2, §3).

Each block is a submodule of its decoder layer (``layer.talan``) and is applied by forward hooks on
that instance: ``pre`` rewrites the layer input, ``post`` the layer output (registered with
``prepend=True`` so transformers 5's ``output_hidden_states`` records the perturbed state; 4.x records
it inside the layer's forward, before the hook) and ``mid`` adds the
block's perturbation of ``residual + attention`` to the attention output. No transformers class is
reassigned and no HF ``forward`` is copied. The hooks have no side effects besides the decode state
that is tied to a cache object (and the forward's inputs tagged on a tensor made for the forward, its
``cache_position`` or BLOOM's and MPT's ALiBi biases, where a stack hands its layers no kwargs), so gradient
checkpointing (which re-runs them) is safe.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from .block import TalanBlock
from .config import TalanConfig
from .decode_state import DecodeStates, Replay
from .hosts import (
    LayerLayout,
    closed_gates,
    decoder_layers,
    decoder_stack,
    peft_adapter_configs,
    prefix_cache_lengths,
    stack_and_layout,
)
from .masks import active_from_4d_mask, mask_from_dict, starts_from_4d_mask

BLOCK_NAME = "talan"
_PATCH_ATTR = "_talan_patch"


INPUTS_KWARG = "talan_inputs"  # the forward's _ForwardInputs, handed from the decoder stack to its layers
_INPUTS_TAG = "_talan_inputs"  # the same, on a tensor made for the forward by a stack that hands its layers no kwargs
# the tensors a stack that hands its layers no kwargs makes for each forward and hands every layer: the cache positions
# (transformers 4.x), or BLOOM's and MPT's ALiBi biases
_PER_FORWARD_TENSORS = ("cache_position", "alibi", "position_bias")
# The names a stack, a layer or its attention give the cache: transformers 5.2x "cache", before that
# "past_key_values"; a hybrid's linear attention (and 4.x's Mamba) gets "cache_params" (with the layer's other kwargs
# in 5.1x); GPT-NeoX's layer "layer_past"; transformers 4.x's Kosmos-2.5 layer "past_key_value"
_CACHE_KWARGS = ("cache", "past_key_values", "cache_params", "layer_past", "past_key_value")


def _cache_in(kwargs: dict):
    return next((kwargs[name] for name in _CACHE_KWARGS if kwargs.get(name) is not None), None)


@dataclass
class _TokenContext:
    """What one block needs besides the hidden states: which tokens are real, where packed sequences
    start, and the cache (with its length before this forward) that its decode state is tied to."""

    active: torch.Tensor | None
    resets: torch.Tensor | None
    cache: object
    past_len: int


@dataclass
class _ForwardInputs:
    """What the model-level pre-hook saw for the current forward."""

    attention_mask: torch.Tensor | None
    past_len: int
    resets_cache: dict
    # the [B, T] text positions the stack was given, for a hybrid layer's linear attention, which gets none
    position_ids: torch.Tensor | None = None
    # [B, T] where packed sequences start, read off a 4-D attention mask (position ids split them only without one)
    mask_starts: torch.Tensor | None = None


def _in_backward() -> bool:
    """Whether a backward pass is running: a hook called then runs in a gradient-checkpointing recompute (the test
    torch.utils.checkpoint itself makes)."""
    return torch._C._current_graph_task_id() != -1


def _running_layer_kwargs(layer: nn.Module) -> dict | None:
    """The kwargs holding the forward's inputs of ``layer``'s ``forward`` call that is running, read off its frame
    further up the Python stack (None where they do not hold them). transformers 5 checkpoints a layer's ``forward``,
    not its ``__call__``, so the layer's hooks do not run again when gradient checkpointing recomputes it; a token
    mixer that the layer hands none of its kwargs (Jamba's Mamba, Nemotron's self_attn) finds its own forward's
    inputs only there, in the kwargs the checkpoint kept for the recompute."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_locals.get("self") is layer:  # the innermost one: the layer's own forward, not a wrapper's
            return next((v for v in frame.f_locals.values() if isinstance(v, dict) and INPUTS_KWARG in v), None)
        frame = frame.f_back
    return None


_FORWARD_PARAMS: dict[type, tuple[str, ...]] = {}  # a layer class -> its forward's parameter names


def _named_args(layer: nn.Module, args: tuple, kwargs: dict) -> dict:
    """A layer call's ``kwargs`` with its positional arguments after the hidden states named as its forward names
    them: GPT-2's stack hands its blocks the cache and mask positionally."""
    if len(args) <= 1:
        return kwargs
    names = _FORWARD_PARAMS.get(type(layer))
    if names is None:
        names = _FORWARD_PARAMS[type(layer)] = tuple(inspect.signature(layer.forward).parameters)
    return {**dict(zip(names[1:], args[1:])), **kwargs}


def _hidden_of(output):
    """The hidden states a layer or its attention returns: the output itself, or its first element (a tuple; GPT-1's
    blocks and attention return lists)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def _with_hidden(output, hidden: torch.Tensor):
    """``output`` with `_hidden_of` it replaced by ``hidden``."""
    if not isinstance(output, (tuple, list)):
        return hidden
    return [hidden, *output[1:]] if isinstance(output, list) else (hidden, *output[1:])


def _holds_states_only(cache) -> bool:
    """Whether ``cache`` holds a state-space model's recurrent states alone (Mamba's), which count no tokens:
    transformers 4.x's MambaCache and Mamba2Cache, or a 5.x Cache of linear-attention layers only."""
    if hasattr(cache, "ssm_states") and hasattr(cache, "conv_states") and not hasattr(cache, "get_seq_length"):
        return True
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(hasattr(layer, "has_previous_state") and not hasattr(layer, "keys")
                                for layer in layers)


def _new_tokens(bound: dict) -> int | None:
    """How many tokens a forward of the stack (its bound arguments) adds: its input ids' or embeddings' length."""
    tokens = next((bound[k] for k in ("input_ids", "inputs_embeds") if bound.get(k) is not None), None)
    return None if tokens is None else tokens.shape[1]


def _past_length(cache, states_only: bool, bound: dict, decode_states: DecodeStates) -> int:
    """How many tokens ``cache`` held before this forward's: its own count, or where generate steps
    (``cache_position``) where it miscounts or counts none. A cache of states alone without a cache_position (5.x
    Mamba) has the 2-D attention mask's columns before the new tokens, or, in a decode step that gets no mask,
    the length TALAN's own states for it were stored at."""
    counted = None if states_only else _counted_tokens(cache)
    position = bound.get("cache_position")
    if (counted is None or _miscounting_cache(cache, counted)) and isinstance(position, torch.Tensor) \
            and position.numel():
        return int(position[0])  # where generate itself steps
    if counted is not None:
        return int(counted)
    mask, new = bound.get("attention_mask"), _new_tokens(bound)
    if isinstance(mask, torch.Tensor) and mask.dim() == 2 and new is not None:
        return mask.shape[1] - new
    counted = decode_states.counted_length(cache)
    if counted is None and any(any(getattr(layer, "has_previous_state", {}).values())
                               for layer in getattr(cache, "layers", ())):
        raise ValueError(f"this {type(cache).__name__} holds the states of tokens that TALAN never saw: start "
                         "generation from an empty cache (a new prompt) on the patched model")
    return counted or 0


def _counted_tokens(cache):
    """``cache.get_seq_length()``: the tokens its layer 0 holds; where that holds none but a later layer does, the
    most any layer holds: the MiniMaxCache keeps its linear-attention layers' states beside its layers, so layer 0 of
    MiniMax stays empty; RecurrentGemma keeps its recurrent states in its modules, so on transformers 5.25 its
    recurrent layer 0 counts a 0-d tensor of zero tokens."""
    counted = cache.get_seq_length()
    if int(counted) == 0:
        filled = [layer for layer in getattr(cache, "layers", ())
                  if isinstance(getattr(layer, "keys", None), torch.Tensor) and layer.keys.numel()]
        return max((layer.get_seq_length() for layer in filled), default=counted)
    return counted


def _miscounting_cache(cache, counted) -> bool:
    """Whether transformers 4.x's ``cache`` may have miscounted its length as ``counted``, so that the forward's
    ``cache_position`` (by which generate steps) must say it: a StaticCache counts the non-zero key rows of batch
    row 0 (a tensor), too few when that row starts with zero keys (padding); the hybrid caches outside the Cache
    hierarchy count an empty attention layer's batch rows as tokens (GraniteMoeHybrid's)."""
    from transformers.cache_utils import Cache

    return isinstance(counted, torch.Tensor) or not isinstance(cache, Cache)


class _Patch:
    """Everything `patch` added to one decoder stack, so `unpatch` can remove it exactly."""

    def __init__(self, stack: nn.Module, config: TalanConfig, layer_indices: tuple[int, ...], layout: LayerLayout,
                 peft_configs: list[dict] | None = None):
        self.stack = stack
        self.layers = decoder_layers(stack)
        self.layout = layout
        # the peft_config dicts of the PeftModel(s) patched: prefix tuning prefills every forward's cache with
        # virtual tokens that no block sees, so a cache that long with no TALAN state is a fresh start
        self.peft_configs = peft_configs or []
        self.config = config
        self.layer_indices = layer_indices
        self.enabled = True
        self.handles: list = []
        self.inputs = _ForwardInputs(None, 0, {})
        self.decode_states = DecodeStates()
        self.layer_inputs: dict[int, torch.Tensor] = {}  # mid site: the residual of the running layer call
        # mid site, where the attention output is normed or dropped out before it joins the residual: the kwargs
        # that the running layer call handed its self_attn (the norm or dropout gets none)
        self.attention_kwargs: dict[int, dict] = {}
        # mid site, a hybrid family's layers whose token mixer is not self_attn: the layer call's own kwargs,
        # which transformers 4.x does not hand on to linear attention or a convolution
        self.layer_kwargs: dict[int, dict] = {}
        # where a layer's input and output keep TALAN's stream (several in Gemma 3n's AltUp, in hyper-connections)
        self.streams = layout.streams(stack.config)
        params = inspect.signature(stack.forward).parameters
        self._forward_params = tuple(params)  # names only: a signature's mappingproxy cannot be deep-copied
        # Qwen3/Llama stacks pass their **kwargs on to every layer, and the layer to its self_attn (with its
        # position ids and cache); transformers 4.x's BLOOM and MPT take **deprecated_arguments only to refuse them.
        self._passes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD and p.name != "deprecated_arguments"
                                  for p in params.values())

    def _prefix_lengths(self) -> frozenset[int]:
        return prefix_cache_lengths(self.peft_configs)

    def blocks(self) -> Iterator[tuple[int, TalanBlock]]:
        for i in self.layer_indices:
            yield i, getattr(self.layers[i], BLOCK_NAME)

    # ---- hooks -------------------------------------------------------------------------------
    def on_model_forward(self, module, args, kwargs):
        if not self.enabled:  # talan.disabled(model): the unpatched model's forward, whatever its inputs
            return None
        bound = dict(zip(self._forward_params, args))
        bound.update(kwargs)
        mask = bound.get("attention_mask")
        cache = _cache_in(bound)
        if isinstance(cache, (tuple, list)):  # transformers itself no longer reads these (it needs get_seq_length)
            raise ValueError(f"past_key_values is a legacy {type(cache).__name__} of per-layer key/value tensors; pass "
                             "the transformers Cache object (a DynamicCache, ...) that the model returned")
        states_only = cache is not None and _holds_states_only(cache)
        if cache is not None and not (states_only or callable(getattr(cache, "get_seq_length", None))):
            # Continuous batching packs the new tokens of many requests into one row and pages their keys;
            # the forward does not say which request a token belongs to, so no per-sequence (S, N) state
            # could be carried from one step to the next.
            raise ValueError(f"TALAN keeps a memory state per sequence and cannot follow a {type(cache).__name__} "
                             "(continuous batching: generate_batch, init_continuous_batching, transformers serve "
                             "--continuous-batching); use model.generate, or talan.disabled(model) to run without "
                             "TALAN")
        past_len = 0 if cache is None else _past_length(cache, states_only, bound, self.decode_states)
        if isinstance(mask, dict):
            mask = mask_from_dict(mask)
        starts = None
        if isinstance(mask, torch.Tensor) and mask.dim() == 4:
            # generate with a static cache hands over the 4-D mask it built from the 2-D one: a dict per layer
            # type (Qwen3, Qwen2) or, for a model with one layer type (Llama, Mistral), the tensor itself; a
            # vision-language model builds its text decoder's (two-way image blocks; PaliGemma's prefix); a user may
            # pack sequences with a block-diagonal one. With a cache sequences are never packed.
            active = active_from_4d_mask(mask, past_len)
            starts = starts_from_4d_mask(mask, active) if cache is None else None
            mask = active
        elif isinstance(mask, torch.Tensor) and mask.dim() == 2:
            # its columns are the cache's tokens, then this forward's; BLOOM's static-cache generation pads it with
            # zeros to the cache's size (for its ALiBi), columns that are no token
            new = _new_tokens(bound)
            if new is not None and mask.shape[1] > past_len + new:
                mask = mask[:, :past_len + new]
        elif mask is not None:
            kind = f"a {mask.dim()}-D tensor" if isinstance(mask, torch.Tensor) else f"a {type(mask).__name__}"
            raise ValueError(f"TALAN needs the [batch, length] attention_mask (or a [batch, 1, query, key] one) to "
                             f"know which tokens are padding; got {kind}. Pass the tokenizer's attention_mask")
        position_ids = bound.get("position_ids")
        if isinstance(position_ids, torch.Tensor) and position_ids.dim() == 3:  # Qwen3.5: [text, M-RoPE's 3 rows]
            position_ids = position_ids[0] if position_ids.shape[0] == 4 else None
        self.inputs = _ForwardInputs(mask, past_len, {}, position_ids, starts)
        if not self._passes_kwargs:
            return None
        # The forward's inputs travel in the layers' kwargs, so a layer that gradient checkpointing recomputes
        # in the backward reads its own forward's padding mask, not that of a later forward: transformers 4.x
        # checkpoints the layer's __call__, so the layer hooks run again then (5.x checkpoints forward only).
        return args, {**kwargs, INPUTS_KWARG: self.inputs}

    def _inputs_of(self, layer_kwargs: dict) -> _ForwardInputs:
        """The inputs of the forward that a layer call belongs to. They travel in its kwargs where the stack passes
        its kwargs on; a stack that does not (transformers 4.x's Jamba, OLMoE, ...; BLOOM's, MPT's) hands every layer
        a tensor it made for the forward (the ``cache_position``; BLOOM's ``alibi``, MPT's ``position_bias``), so the
        forward tags that tensor with its inputs, and a layer that gradient checkpointing recomputes in the backward
        (with the same kwargs; 4.x re-runs the layer's hooks then) reads them off it rather than those of a later
        forward."""
        inputs = layer_kwargs.get(INPUTS_KWARG)
        if inputs is not None:
            return inputs
        tagged = next((layer_kwargs[name] for name in _PER_FORWARD_TENSORS
                       if isinstance(layer_kwargs.get(name), torch.Tensor)), None)
        if tagged is None:
            return self.inputs
        if _in_backward():
            return getattr(tagged, _INPUTS_TAG, self.inputs)
        setattr(tagged, _INPUTS_TAG, self.inputs)
        return self.inputs

    def _context(self, hidden: torch.Tensor, layer_kwargs: dict) -> _TokenContext:
        """Active mask, packed-sequence starts and cache for the tokens of one layer call."""
        b, t = hidden.shape[:2]
        inputs = self._inputs_of(layer_kwargs)
        mask = inputs.attention_mask
        active = None
        if mask is not None:
            if mask.shape[0] != b or mask.shape[1] < t:
                raise ValueError(f"attention_mask of shape {tuple(mask.shape)} does not cover {b} x {t} tokens")
            active = mask[:, -t:].to(device=hidden.device, dtype=torch.bool)
        cache = _cache_in(layer_kwargs)
        position_ids = layer_kwargs.get("position_ids", inputs.position_ids)
        resets = None if inputs.mask_starts is None else inputs.mask_starts[:, -t:]
        # transformers' packed-sequence rule (masking_utils): position ids split sequences only with
        # no attention mask and no cache; a new sequence starts where they do not step by exactly 1.
        if mask is None and cache is None and position_ids is not None and t > 1:
            key = id(position_ids)
            if key not in inputs.resets_cache:
                pos = position_ids.expand(b, -1) if position_ids.shape[0] != b else position_ids
                starts = torch.zeros_like(pos, dtype=torch.bool)
                starts[:, 1:] = (pos[:, 1:] - pos[:, :-1]) != 1
                inputs.resets_cache[key] = (starts if bool(starts.any()) else None, position_ids)
            resets = inputs.resets_cache[key][0]
        return _TokenContext(active, resets, cache, inputs.past_len)

    def _apply(self, layer_idx: int, hidden: torch.Tensor, ctx: _TokenContext) -> torch.Tensor:
        block = getattr(self.layers[layer_idx], BLOCK_NAME)
        state = None
        if ctx.cache is not None:
            state = self.decode_states.lookup(ctx.cache, layer_idx, ctx.past_len, hidden.shape[0], block,
                                              self._prefix_lengths)
        out, new_state = block(hidden, ctx.active, ctx.resets, state)
        if ctx.cache is not None:
            replay = Replay(ctx.past_len, state, hidden.detach(), ctx.active)  # store() keeps it if short
            self.decode_states.store(ctx.cache, layer_idx, ctx.past_len + hidden.shape[1], new_state, replay)
        return out

    # The hooks are methods of this object (with the layer index bound by functools.partial), never closures:
    # copy.deepcopy(model) copies the _Patch with the stack it hangs on, and a deep-copied bound method is bound
    # to the copy, so a copied model runs its own blocks and hooks (trl's reference model, an EMA copy).
    def _apply_to_stream(self, layer_idx: int, hidden: torch.Tensor, layer_kwargs: dict) -> torch.Tensor:
        """`_apply` to a layer's input or output: all of it, or TALAN's stream of the several it holds."""
        stream = self.streams.read(hidden)
        new_stream = self._apply(layer_idx, stream, self._context(stream, layer_kwargs))
        return self.streams.write(hidden, stream, new_stream)

    def _layer_pre(self, layer_idx, module, args, kwargs):
        if not self.enabled:
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        new_hidden = self._apply_to_stream(layer_idx, hidden, _named_args(module, args, kwargs))
        if args:
            return (new_hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": new_hidden}

    def _layer_post(self, layer_idx, module, args, kwargs, output):
        if not self.enabled:
            return None
        new_hidden = self._apply_to_stream(layer_idx, _hidden_of(output), _named_args(module, args, kwargs))
        return _with_hidden(output, new_hidden)

    def _residual_pre(self, layer_idx, module, args, kwargs):
        # The input layernorm's input (self_attn's, in a post-norm layer) is exactly the layer's residual; this
        # hook runs inside the checkpointed forward, so the recompute sees its own (recomputed) residual.
        if self.enabled:
            self.layer_inputs[layer_idx] = args[0] if args else kwargs["hidden_states"]

    def _residual_post(self, layer_idx, module, args, output):
        if self.enabled:
            self.layer_inputs[layer_idx] = output

    def _branch_post(self, layer_idx, module, args, output):
        # Gemma 3n's LAuReL runs after the input norm, before attention: its output joins the residual kept above
        if self.enabled and layer_idx in self.layer_inputs:
            self.layer_inputs[layer_idx] = self.layer_inputs[layer_idx] + output

    def _attention_kwargs_pre(self, layer_idx, module, args, kwargs):
        if self.enabled:
            self.attention_kwargs[layer_idx] = kwargs

    def _layer_kwargs_pre(self, layer_idx, module, args, kwargs):
        # transformers 4.x re-runs the layer's hooks when gradient checkpointing recomputes it, so these are
        # the recomputed forward's own kwargs there
        if self.enabled:
            self.layer_kwargs[layer_idx] = _named_args(module, args, kwargs)

    def _attention_post(self, layer_idx, module, args, kwargs, output):
        # self_attn gets the layer's kwargs (the forward's inputs, position ids, cache), so its own
        # recompute under gradient checkpointing reads the mask of its own forward, like the other sites;
        # a norm or dropout after it reads the kwargs its self_attn got in the same layer call
        residual = self.layer_inputs.pop(layer_idx, None)  # with Gemma 3n's LAuReL output added
        kwargs = self.attention_kwargs.pop(layer_idx, kwargs)
        layer_kwargs = self.layer_kwargs.pop(layer_idx, None)
        if not self.enabled or residual is None:
            return None
        layer = self.layers[layer_idx]
        if INPUTS_KWARG not in kwargs:  # a token mixer that got none of the layer's kwargs
            # no layer hook kept them (none on this layer, or transformers 5 recomputing it without its hooks): in
            # a forward the latest inputs are this forward's; in a backward's recompute they are found up the stack
            if layer_kwargs is None and _in_backward():
                layer_kwargs = _running_layer_kwargs(layer)
            kwargs = kwargs if layer_kwargs is None else {**layer_kwargs, **kwargs}  # its own cache, if it got one
        attn_out = _hidden_of(output)
        layout = self.layout.of(layer)
        if layout.adds_residual:  # the sum itself (BLOOM's attention, ZAYA's residual scaling): TALAN's output
            attn_new = self._apply(layer_idx, attn_out, self._context(attn_out, kwargs))  # replaces it
        else:
            residual_scale, scale = layout.scales_of(layer)
            if residual_scale is not None:
                residual = residual * residual_scale
            h_mid = residual + (attn_out if scale is None else attn_out * scale)  # exactly the layer's sum
            h_new = self._apply(layer_idx, h_mid, self._context(h_mid, kwargs))
            delta = h_new - h_mid  # the layer then adds the residual back: h_mid + delta
            attn_new = attn_out + (delta if scale is None else delta / scale)
        return _with_hidden(output, attn_new)

    def install(self) -> None:
        self.handles.append(self.stack.register_forward_pre_hook(self.on_model_forward, with_kwargs=True))
        for i in self.layer_indices:
            layer = self.layers[i]
            # each site hooks only where it acts, so no other hook runs on every layer call
            if self.config.site == "pre":
                hook = functools.partial(self._layer_pre, i)
                self.handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
            if self.config.site == "post":
                hook = functools.partial(self._layer_post, i)
                self.handles.append(layer.register_forward_hook(hook, with_kwargs=True, prepend=True))
            if self.config.site == "mid":
                layout = self.layout.of(layer)  # a hybrid's layers differ
                residual_module = layer.get_submodule(layout.residual_input)
                if layout.residual_normed:  # MiniMax's residual: the normed layer input
                    hook = functools.partial(self._residual_post, i)
                    self.handles.append(residual_module.register_forward_hook(hook))
                else:
                    hook = functools.partial(self._residual_pre, i)
                    self.handles.append(residual_module.register_forward_pre_hook(hook, with_kwargs=True))
                output_module = layer.get_submodule(layout.attention_output)
                token_mixer = layer.get_submodule(layout.token_mixer)
                if output_module is not token_mixer:
                    kwargs_hook = functools.partial(self._attention_kwargs_pre, i)
                    self.handles.append(token_mixer.register_forward_pre_hook(kwargs_hook, with_kwargs=True))
                if layout.token_mixer != "self_attn":
                    kwargs_hook = functools.partial(self._layer_kwargs_pre, i)
                    self.handles.append(layer.register_forward_pre_hook(kwargs_hook, with_kwargs=True))
                hook = functools.partial(self._attention_post, i)
                self.handles.append(output_module.register_forward_hook(hook, with_kwargs=True))
                if layout.residual_branch is not None:
                    hook = functools.partial(self._branch_post, i)
                    self.handles.append(layer.get_submodule(layout.residual_branch).register_forward_hook(hook))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.layer_inputs.clear()
        self.attention_kwargs.clear()
        self.layer_kwargs.clear()
        for i in self.layer_indices:
            delattr(self.layers[i], BLOCK_NAME)


def _get_patch(model: nn.Module, required: bool = True) -> _Patch | None:
    stack = decoder_stack(model)
    found = getattr(stack, _PATCH_ATTR, None)
    if found is None and required:
        raise ValueError(f"{type(model).__name__} is not patched with TALAN: call talan.patch(model) first")
    return found


def _accelerate_hooks(layer: nn.Module) -> tuple:
    hook = getattr(layer, "_hf_hook", None)
    return tuple(h for h in getattr(hook, "hooks", (hook,)) if h is not None)  # SequentialHook holds several


def _layer_device(layer: nn.Module) -> torch.device:
    """Where the layer computes. For a model that accelerate dispatched (a device_map), its hook's execution
    device: a layer offloaded to "cpu" or "disk" keeps its weights on the meta device between forwards, and the
    block (its weights are small) stays on the device the layer runs on. Otherwise where its weights are."""
    for hook in _accelerate_hooks(layer):
        device = getattr(hook, "execution_device", None)
        if device is not None:
            return torch.device(device)  # an int is a CUDA index
    for p in layer.parameters():
        return p.device
    return torch.device("cpu")


def patch(model: nn.Module, config: TalanConfig | None = None) -> nn.Module:
    """Insert TALAN blocks into ``model`` in place and return the same object.

    Supports HF Qwen3 and Llama (``*ForCausalLM``, the bare ``*Model`` or a task head: sequence or token
    classification, question answering; or of another family in ``hosts.FAMILIES``: Qwen3-MoE, Gemma, Phi-3, ...)
    and peft models wrapping one (peft first, then patch). Never changes ``requires_grad`` of a
    non-TALAN parameter; the blocks' own trainability follows ``config.trainable``.
    """
    config = TalanConfig() if config is None else config
    if not isinstance(config, TalanConfig):
        raise TypeError(f"config must be a talan.TalanConfig; got {type(config).__name__}")
    stack, layout = stack_and_layout(model)
    if getattr(stack, _PATCH_ATTR, None) is not None:
        raise ValueError("model is already patched with TALAN: call talan.unpatch(model) before patching again")
    layers = decoder_layers(stack)
    layer_indices = config.resolve_layers(len(layers))
    no_mid = next(filter(None, (layout.of(layers[i]).no_mid for i in layer_indices)), None)
    if config.site == "mid" and no_mid:
        raise ValueError(f"site: {type(stack).__name__}'s decoder layers {no_mid}, so there is no point between "
                         "attention and MLP for site='mid'; use site='pre' or site='post'")
    closed = closed_gates(layers, layer_indices, layout) if config.site == "mid" else []
    if closed:
        raise ValueError(f"site: decoder layer(s) {closed} of {type(stack).__name__} gate their attention output by "
                         f"tanh({layout.of(layers[closed[0]]).attention_gate}) = 0 (not trained yet), so nothing "
                         "joins the residual stream between attention and MLP for site='mid'; load the trained "
                         "checkpoint first, choose another layer, or use site='pre' or site='post'")
    # accelerate offloads a layer leaf by leaf, so the block (a leaf of its own) keeps its weights; only a hook on
    # the layer itself that offloads (preload_module_classes) would load and drop every tensor under it.
    offloaded = [i for i in layer_indices if any(getattr(h, "offload", False)
                                                 for h in _accelerate_hooks(layers[i]))]
    if offloaded:
        raise ValueError(f"layer: accelerate offloads decoder layer(s) {offloaded} as one module (its "
                         "preload_module_classes), and its hook would load and drop the TALAN block's weights with the "
                         "layer's; keep those layers on a device in the device_map, or choose another layer")
    hidden_size = stack.config.hidden_size
    # Build every block before touching the model, so a failure leaves it unchanged.
    blocks = {i: TalanBlock(hidden_size, config, device=_layer_device(layers[i])) for i in layer_indices}
    for i, block in blocks.items():
        block.apply_trainable_scope()
        layers[i].add_module(BLOCK_NAME, block)
    state = _Patch(stack, config, layer_indices, layout, peft_adapter_configs(model))
    state.install()
    setattr(stack, _PATCH_ATTR, state)
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Remove every TALAN block and hook; the model's outputs are exactly the unpatched ones."""
    state = _get_patch(model)
    state.remove()
    delattr(state.stack, _PATCH_ATTR)
    return model


def is_patched(model: nn.Module) -> bool:
    return _get_patch(model, required=False) is not None


def talan_config(model: nn.Module) -> TalanConfig:
    return _get_patch(model).config


def talan_blocks(model: nn.Module) -> dict[int, TalanBlock]:
    """The TALAN blocks by decoder-layer index."""
    return dict(_get_patch(model).blocks())


def talan_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """Iterate over every TALAN parameter of a patched model."""
    for _, block in _get_patch(model).blocks():
        yield from block.parameters()


def mark_trainable(model: nn.Module) -> nn.Module:
    """Apply the trainability scope of the config (e.g. after ``get_peft_model`` froze TALAN)."""
    for _, block in _get_patch(model).blocks():
        block.apply_trainable_scope()
    return model


@contextlib.contextmanager
def disabled(model: nn.Module):
    """Run the model without TALAN inside the block (outputs equal the unpatched model's)."""
    state = _get_patch(model)
    previous = state.enabled
    state.enabled = False
    try:
        yield model
    finally:
        state.enabled = previous
