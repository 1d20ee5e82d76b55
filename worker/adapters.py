"""Brand style adapters (LoRA) on a warm pipeline: fetch a job's adapter files, load them
through diffusers' LoRA loading (PEFT), and switch the set each pipeline call renders with.

Fetching runs on the io pool with the job's other inputs (``fetch``: the job's team and its
pinned digests name the objects, shared/adapters.py), parsed there into tensors and kept in
a small in-memory cache bounded in bytes. Activating runs on the device lane, just before
the pipeline call (``activate``): an adapter not yet in the pipeline is loaded once under a
name derived from its digest (``load_lora_weights``), and at most ``max_loaded`` stay
loaded (the least recently used is deleted). Each call then names its group's adapters
and scales (``set_adapters``), or turns LoRA off (``disable_lora``) for a group with none:
jobs with different adapters never share a call (shared/batching.py), so one set holds per
call.

Two things a fast path does to a pipeline matter here:

* Fused QKV projections (worker/accel.py, on CUDA): the fused attention reads one ``to_qkv``
  weight copied at fusing time (cross-attention: one ``to_kv``), not ``to_q``/``to_k``/
  ``to_v``, where LoRA layers go, so most of a LoRA would silently change nothing. The UNet
  is unfused before its first call with adapters (the VAE, which takes no LoRA, stays fused).
* torch.compile (CUDA only): inserting LoRA layers, or changing how many are active,
  changes the modules the compiled UNet's graphs guard on, so the first call with a new
  adapter set recompiles (tens of seconds on a GPU; the results stay right). diffusers'
  hotswap avoids that for one adapter at a time: a model with ``options.lora_hotswap_rank``
  (the highest rank its adapters may have) gets ``enable_lora_hotswap`` before compiling
  (worker/pipelines.py), and a group with one adapter then renders through one slot whose
  weights are swapped in place (``load_lora_weights(..., hotswap=True)``): the first load
  into the slot recompiles once, later swaps do not. A group with several adapters, or an
  adapter the slot cannot take (other target layers, a text-encoder LoRA: diffusers swaps
  the UNet's only), is loaded under its own name as without hotswap. A compiled worker
  logs the first recompiling load.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from shared.adapters import adapter_key
from shared.errors import PermanentRenderError
from shared.schemas import AdapterUse
from shared.storage import Storage

log = logging.getLogger(__name__)

# Adapters kept loaded in one pipeline: each adds its LoRA layers' work to every call that
# names it and memory (an SD1.5 rank-32 LoRA: ~40 MB), none to a call that does not.
MAX_LOADED = 8
# The one pipeline name a hotswapping model's single adapters are swapped into.
HOTSWAP_SLOT = "hotswap"
# Parsed adapter files kept in memory for the next jobs naming them (tensors on the CPU).
CACHE_BYTES = 1024 * 1024 * 1024

StateDict = dict[str, Any]


def pipeline_name(sha256: str) -> str:
    """The name an adapter is loaded under: its digest, so two team names for one file (or
    one name registered again) never clash, and a name never means two files."""
    return f"a{sha256[:32]}"


class Adapters:
    """One pipeline's adapters: the parsed files cache (any thread) and what is loaded in
    the pipeline (the device lane only)."""

    def __init__(
        self,
        max_loaded: int = MAX_LOADED,
        cache_bytes: int = CACHE_BYTES,
        hotswap_rank: int | None = None,
    ) -> None:
        self.max_loaded = max_loaded
        self.hotswap_rank = hotswap_rank
        # What the hotswap slot holds: a digest, "" once a failed swap left it unknown,
        # None while empty.
        self._slot: str | None = None
        self.cache_bytes = cache_bytes
        self._files: OrderedDict[str, tuple[StateDict, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._loaded: OrderedDict[str, None] = OrderedDict()  # pipeline names, LRU first
        self._lora_on = False
        self.loads = 0  # adapters loaded into the pipeline so far (tests, logs)

    # -- io pool ------------------------------------------------------------------------

    def fetch(
        self, storage: Storage, team_id: uuid.UUID, uses: Sequence[AdapterUse]
    ) -> tuple[StateDict, ...]:
        """The parsed file of each of ``uses`` (the job's team's objects), from the cache
        or storage. A file whose digest is not the pinned one is refused (permanent)."""
        return tuple(self._file(storage, team_id, use) for use in uses)

    def _file(self, storage: Storage, team_id: uuid.UUID, use: AdapterUse) -> StateDict:
        # Cached by object key, so by team too: a job reads only its own team's objects,
        # whatever another team's jobs brought in before.
        key = adapter_key(team_id, use.sha256)
        with self._lock:
            hit = self._files.get(key)
            if hit is not None:
                self._files.move_to_end(key)
                return hit[0]
        # StorageError (deleted) or TransientError (S3 down): the caller's to handle.
        data = storage.get(key)
        if hashlib.sha256(data).hexdigest() != use.sha256:
            raise PermanentRenderError(
                f"adapter {use.name!r}: the stored file is not the one the job pinned "
                f"({use.sha256[:12]})"
            )
        from safetensors.torch import load

        state = load(data)
        with self._lock:
            self._files[key] = (state, len(data))
            while len(self._files) > 1 and sum(n for _, n in self._files.values()) > (
                self.cache_bytes
            ):
                self._files.popitem(last=False)
        return state

    # -- device lane --------------------------------------------------------------------

    def activate(
        self,
        pipe: Any,
        uses: Sequence[AdapterUse],
        states: Sequence[StateDict],
        *,
        compiled: bool = False,
    ) -> None:
        """Make the next call of ``pipe`` render with exactly ``uses`` (none: LoRA off)."""
        if not uses:
            if self._lora_on:
                pipe.disable_lora()
                self._lora_on = False
            return
        # One file named twice (two team names for it) applies once, at the scales' sum.
        if getattr(pipe, "fusing_unet", False):
            # The fused attention would never read the LoRA layers (module docstring).
            pipe.unfuse_qkv_projections(unet=True, vae=False)
            log.info("unfused the UNet's QKV projections: adapters apply to to_q/to_k/to_v")
        one = self.hotswap_rank is not None and len({use.sha256 for use in uses}) == 1
        if one and self._swap_in(pipe, uses[0], states[0], compiled=compiled):
            self._enable(pipe)
            pipe.set_adapters([HOTSWAP_SLOT], adapter_weights=[sum(u.scale for u in uses)])
            return
        scales: dict[str, float] = {}
        wanted = {pipeline_name(use.sha256) for use in uses}
        self._make_room(pipe, len(wanted - set(self._loaded)), keep=wanted)
        for use, state in zip(uses, states, strict=True):
            name = pipeline_name(use.sha256)
            if name not in self._loaded:
                self._load(pipe, name, use, state, compiled=compiled)
            self._loaded.move_to_end(name)
            scales[name] = scales.get(name, 0.0) + use.scale
        self._enable(pipe)
        pipe.set_adapters(list(scales), adapter_weights=list(scales.values()))

    def _enable(self, pipe: Any) -> None:
        if not self._lora_on:
            pipe.enable_lora()
            self._lora_on = True

    def _swap_in(self, pipe: Any, use: AdapterUse, state: StateDict, *, compiled: bool) -> bool:
        """Put ``use`` in the hotswap slot (loaded into it first, swapped in place after);
        False when the slot cannot take it (the caller loads it under its own name)."""
        if self._slot == use.sha256:
            return True
        if compiled and self._slot is None:
            log.warning("loading the first adapter into a compiled UNet: its graphs recompile once")
        # Copies of the tensors: the first load may keep them as the slot's parameters, and
        # a swap writes the next adapter into those in place, which would change the cached
        # file's tensors under it.
        copied = {key: tensor.clone() for key, tensor in state.items()}
        try:
            pipe.load_lora_weights(
                copied, adapter_name=HOTSWAP_SLOT, hotswap=self._slot is not None
            )
        except (ValueError, KeyError, RuntimeError, TypeError) as e:
            if self._slot is None:  # nothing was in the slot: clear what a failed load left
                self._discard(pipe, HOTSWAP_SLOT)
            else:  # a swap may have stopped halfway: the slot's weights are unknown now
                self._slot = ""
            log.warning("adapter %r cannot be hotswapped (%s): loading it by name", use.name, e)
            return False
        self._slot = use.sha256
        self.loads += 1
        return True

    def _load(
        self,
        pipe: Any,
        name: str,
        use: AdapterUse,
        state: StateDict,
        *,
        compiled: bool,
    ) -> None:
        if compiled and not self._loaded:
            log.warning("loading adapters into a compiled UNet: its graphs recompile once")
        try:
            # A copy: diffusers pops converted keys from the dict it is given.
            pipe.load_lora_weights(dict(state), adapter_name=name)
        except (ValueError, KeyError, RuntimeError, TypeError) as e:
            self._discard(pipe, name)
            raise PermanentRenderError(
                f"adapter {use.name!r} ({use.sha256[:12]}) does not fit this model: {e}"
            ) from e
        self._loaded[name] = None
        self.loads += 1
        # A newly loaded adapter is active at once: the caller sets the call's set next.

    def _make_room(self, pipe: Any, new: int, *, keep: set[str]) -> None:
        """Delete the least recently used adapters not in ``keep`` until ``new`` more fit
        within ``max_loaded`` (a call's own set is never cut, even past the limit)."""
        while len(self._loaded) + new > self.max_loaded:
            evict = next((n for n in self._loaded if n not in keep), None)
            if evict is None:
                return
            pipe.delete_adapters(evict)
            del self._loaded[evict]

    @staticmethod
    def _discard(pipe: Any, name: str) -> None:
        """Remove what a failed load left (layers of some modules, not others)."""
        present = {n for names in pipe.get_list_adapters().values() for n in names}
        if name in present:
            pipe.delete_adapters(name)

    @property
    def loaded(self) -> list[str]:
        """Pipeline names of the loaded adapters, least recently used first."""
        return list(self._loaded)
