"""MementoEngine: vLLM 0.32 with memento KV eviction, returning one `Sample` per generation.

    engine = MementoEngine(model_path, memento={"keep_last_n_blocks": 0}, enforce_eager=True)
    samples = engine.generate([prompt_ids], Sampling(n=4, temperature=1.0, max_tokens=4096,
                                                     max_block_tokens=2048))

`memento=None` is plain vLLM (no eviction; live KV is still counted, for comparisons). With a
memento config, the plugin in `rollout.vllm_plugin` evicts each closed block's KV when its
`<|summary_end|>` is sampled, exactly as `rollout.layout.evict_at` describes, so the trainer
scores each sample under the attention the engine actually used.

Sampling is our own small dataclass, `Sampling`, rather than vLLM's SamplingParams, so callers
(the trainer, tests) never import vLLM. Besides the usual fields it carries `max_block_tokens`
(the block-length cap) and two hooks for tests and benchmarks: `script` (tokens forced at given
response indices) and `ban_token_ids` (never sampled elsewhere).

Layout options can also change per `generate` call (`memento={"keep_last_n_blocks": -1}` gives
plain attention, `{"restart_mode": True}` the paper's ablation) without restarting the engine.

New weights arrive through vLLM's weight-transfer engines (`start_weight_update`, one
`update_weights` per bucket, `finish_weight_update`), driven by `rl.weight_sync`.

Defaults passed to vLLM (any can be overridden): `enforce_eager=True` (compaction under CUDA
graphs is not validated yet), prefix caching and async scheduling off (memento mode refuses
them), `logprobs_mode="processed_logprobs"` (log-probs at the sampling temperature). On CPU size
the KV cache with `kv_cache_memory_bytes` (or VLLM_CPU_KVCACHE_SPACE). Scripts that build an
engine need an `if __name__ == "__main__":` guard, since vLLM starts worker processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
from transformers import AutoTokenizer
from vllm import LLM, SamplingParams

from rollout.block_cap import forced_mask
from rollout.layout import MementoConfig
from rollout.vllm_plugin import plugin_config, register

# Options of MementoConfig a caller may override per call (the token ids are the tokenizer's).
OPTION_KEYS = ("mask_delimiters", "keep_last_n_blocks", "keep_last_block_for_answer")


@dataclass(frozen=True)
class Sampling:
    """How to sample. `n` samples per prompt; `seed` (if set) gives sample k the seed seed + k.

    max_block_tokens: force `<|block_end|>` when an open block holds this many content tokens
        (0: off); forced tokens are flagged in `Sample.forced_mask`.
    script: test/benchmark hook, response index -> token id forced there (also flagged).
    ban_token_ids: test/benchmark hook, ids never sampled where the script forces nothing.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    max_tokens: int = 256
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    max_block_tokens: int = 0
    script: dict[int, int] | None = None
    ban_token_ids: tuple[int, ...] = ()


@dataclass
class Sample:
    """One generation. Per-token fields are aligned with `response_ids` (R tokens)."""

    prompt_ids: list[int]
    response_ids: list[int]
    sampler_logprobs: list[float]  # (R,) log-prob of each sampled token after temperature etc.
    forced_mask: list[bool]  # (R,) token forced by the block cap or the script: no loss
    finish_reason: str  # "stop" | "length" | "abort"
    kv_peak_tokens: int  # most KV token slots the engine held for this request
    kv_peak_pages: int  # most KV pages (vLLM blocks) it held
    num_evictions: int  # evictions applied to its KV
    pages_freed: list[int] = field(default_factory=list)  # pages returned per eviction
    num_preemptions: int = 0  # times vLLM dropped its KV and recomputed it


class MementoEngine:
    """vLLM's offline `LLM` with the memento plugin switched on (or off: `memento=None`).

    Args:
        model_path: Hugging Face checkpoint directory (tokenizer included).
        memento: None (plain), a MementoConfig, or a dict of its options (token ids are then
            read from the tokenizer).
        restart_mode: the paper's ablation (memento KV recomputed without its block).
        weight_transfer_backend: how new weights arrive: "host_buckets" (in the update call,
            any device; rollout.vllm_plugin.weights), or vLLM's "nccl" / "ipc" (GPU).
        **vllm_kwargs: passed to `vllm.LLM`; memento mode refuses prefix caching and async
            scheduling.
    """

    def __init__(self, model_path, memento: MementoConfig | dict | None = None, *,
                 restart_mode: bool = False, weight_transfer_backend: str = "host_buckets",
                 **vllm_kwargs):
        register()  # this process; vLLM's own processes load the entry point
        tokenizer = AutoTokenizer.from_pretrained(str(model_path))
        self.cfg = _memento_config(tokenizer, memento)
        self.evict = memento is not None
        if self.evict:
            for key in ("enable_prefix_caching", "async_scheduling"):
                if vllm_kwargs.get(key):
                    raise ValueError(f"memento mode needs {key}=False (got True)")
        settings = dict(enforce_eager=True, enable_prefix_caching=False, async_scheduling=False,
                        logprobs_mode="processed_logprobs",
                        # vLLM passes its load bar an explicit disable flag, which TQDM_DISABLE
                        # (set by quiet runs: rl.console) cannot override
                        use_tqdm_on_load=os.environ.get("TQDM_DISABLE", "0") in ("0", ""),
                        weight_transfer_config={"backend": weight_transfer_backend},
                        logits_processors=[
                            "rollout.vllm_plugin.logits:ScriptLogitsProcessor",
                            "rollout.vllm_plugin.logits:BlockCapLogitsProcessor"])
        settings.update(vllm_kwargs)
        if weight_transfer_backend == "ipc":
            # CUDA IPC handles hold torch types, which vLLM's RPC to its worker processes
            # carries only pickled.
            os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
        settings["additional_config"] = {**settings.get("additional_config", {}),
                                         **plugin_config(self.cfg, self.evict, restart_mode)}
        self.llm = LLM(model=str(model_path), **settings)

    def generate(self, prompt_token_ids: list[list[int]], sampling: Sampling,
                 memento: dict | None = None) -> list[Sample]:
        """`sampling.n` samples per prompt, prompt-major (prompt 0's samples first).

        Args:
            memento: per-call overrides of the layout options (`OPTION_KEYS`) and
                `restart_mode`, e.g. {"keep_last_n_blocks": -1} for plain attention.
        """
        overrides = self._check_overrides(memento)
        if sampling.max_block_tokens and self.cfg is None:
            raise ValueError("max_block_tokens needs a tokenizer with the memento tokens")
        prompts, params = [], []
        for ids in prompt_token_ids:
            for _ in range(sampling.n):
                seed = None if sampling.seed is None else sampling.seed + len(params)
                prompts.append({"prompt_token_ids": list(ids)})
                params.append(_sampling_params(sampling, seed, overrides))
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [self._sample(out, sampling) for out in outputs]

    # Weight sync: vLLM's weight-transfer control plane, driven by rl/weight_sync.py through
    # the rollout worker. One update is start, one update_weights per bucket, finish.

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        """Set up the transport (NCCL: join the trainer's group; blocks until it does)."""
        self.llm.collective_rpc("init_weight_transfer_engine", kwargs={"init_info": init_info})

    def start_weight_update(self) -> None:
        self.llm.collective_rpc("start_weight_update")

    def update_weights(self, update_info: dict) -> None:
        """Receive and load one bucket (NCCL: blocks until the trainer's broadcast is done)."""
        self.llm.collective_rpc("update_weights", kwargs={"update_info": update_info})

    def finish_weight_update(self) -> None:
        """Re-process the reloaded layers for the kernels; the new weights serve from here."""
        self.llm.collective_rpc("finish_weight_update")

    def sleep(self, level: int = 1) -> None:
        """Release KV cache (and weights at level 2) between rollouts; a no-op on CPU."""
        self.llm.sleep(level=level)

    def wake_up(self) -> None:
        self.llm.wake_up()

    def shutdown(self) -> None:
        """Stop vLLM's EngineCore and worker processes."""
        self.llm.llm_engine.engine_core.shutdown()

    def _check_overrides(self, memento: dict | None) -> dict | None:
        if not memento:
            return None
        if not self.evict:
            raise ValueError("per-call memento options need an engine built with memento mode")
        unknown = set(memento) - set(OPTION_KEYS) - {"restart_mode"}
        if unknown:
            raise ValueError(f"unknown memento options {sorted(unknown)}")
        cfg = self.cfg.replace(**{k: v for k, v in memento.items() if k in OPTION_KEYS})
        plugin_config(cfg, True, memento.get("restart_mode", False))  # validates the combination
        return dict(memento)

    def _sample(self, out, sampling: Sampling) -> Sample:
        completion = out.outputs[0]
        response = list(completion.token_ids)
        logprobs = [float(step[token].logprob) for step, token in zip(completion.logprobs, response)]
        forced = np.zeros(len(response), dtype=bool)
        if sampling.max_block_tokens and self.cfg is not None:
            forced |= forced_mask(out.prompt_token_ids, response, self.cfg,
                                  sampling.max_block_tokens)
        for index in (sampling.script or {}):
            if index < len(response):
                forced[index] = True
        stats = (out.kv_transfer_params or {}).get("memento", {})
        return Sample(prompt_ids=list(out.prompt_token_ids), response_ids=response,
                      sampler_logprobs=logprobs, forced_mask=forced.tolist(),
                      finish_reason=str(completion.finish_reason),
                      kv_peak_tokens=stats.get("kv_peak_tokens", 0),
                      kv_peak_pages=stats.get("kv_peak_pages", 0),
                      num_evictions=stats.get("num_evictions", 0),
                      pages_freed=stats.get("pages_freed", []),
                      num_preemptions=stats.get("num_preemptions", 0))


def block_script(cfg: MementoConfig, blocks: list[tuple[int, int]], start: int = 0
                 ) -> tuple[dict[int, int], int]:
    """A `Sampling.script` that imposes a memento structure from response index `start` on.

    Each (block_len, memento_len) becomes `<|block_start|>`, block_len free tokens,
    `<|block_end|>` `<|summary_start|>`, memento_len free tokens, `<|summary_end|>` and one free
    separator token (never evicted). Free tokens are the model's own.

    Returns:
        the script (response index -> token id) and the index just past the structure.
    """
    script, i = {}, start
    for block_len, memento_len in blocks:
        script[i] = cfg.block_start
        i += 1 + block_len
        script[i], script[i + 1] = cfg.block_end, cfg.summary_start
        i += 2 + memento_len
        script[i] = cfg.summary_end
        i += 2
    return script, i


def _memento_config(tokenizer, memento) -> MementoConfig | None:
    """The layout config; in plain mode the token ids alone (for the block cap), if present."""
    if isinstance(memento, MementoConfig):
        return memento
    try:
        return MementoConfig.from_tokenizer(tokenizer, **(memento or {}))
    except ValueError:
        if memento is not None:
            raise
        return None


def _sampling_params(sampling: Sampling, seed: int | None, memento: dict | None
                     ) -> SamplingParams:
    extra = {}
    if sampling.max_block_tokens:
        extra["max_block_tokens"] = sampling.max_block_tokens
    if sampling.script:
        extra["script"] = [[int(i), int(t)] for i, t in sorted(sampling.script.items())]
    if sampling.ban_token_ids:
        extra["ban_token_ids"] = list(sampling.ban_token_ids)
    if memento:
        extra["memento"] = memento
    return SamplingParams(n=1, temperature=sampling.temperature, top_p=sampling.top_p,
                          top_k=sampling.top_k, max_tokens=sampling.max_tokens, seed=seed,
                          stop_token_ids=list(sampling.stop_token_ids),
                          ignore_eos=sampling.ignore_eos, logprobs=0, detokenize=False,
                          skip_special_tokens=False, extra_args=extra or None)
