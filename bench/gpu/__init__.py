"""GPU benchmarks for one lent machine (one CUDA GPU, no Ray, no Hydra, no network), in four parts:

1. checkpoint: how long the loop is blocked while spotrun snapshots model + AdamW state (fp32, ~1 GB
   and ~8 GB) from the GPU: spotrun's own path (`state.snapshot` + `AsyncCheckpointer.save`, its write
   dropped) against a fresh `t.cpu()` (pageable), a fresh `t.to("cpu", non_blocking=True)` (pinned,
   from torch's pinned-memory cache) and reused pinned buffers. First save (allocation, pinning) and
   steady state (median) apart.
2. embed: rows/s of `SentenceTransformer.encode` called as the embed job's actor calls it (one call per
   1,024-row shard, normalized, TOKENIZERS_PARALLELISM=false as in its Ray workers), a MiniLM-L6
   shaped model with random weights (seed 0; same compute), fp32/fp16/bf16, two batch sizes; and the
   CPU (every core) on a few thousand rows. Texts: bench.embed's generated corpus.
3. fsdp: spotrun's FSDP2 (`fsdp.shard_model`) on a small Llama at world size 1, a few steps, the DCP
   save and load spotrun does (`fsdp.ShardedCheckpoint`), then one more step on the original and the
   restored model: state and step must be bit-identical.
4. ddp: step time of the fine-tune's EncoderTask (MiniLM shape, random weights) in DDP over NCCL at
   world size 1, against no DDP on the same GPU and DDP over gloo on the CPU.

Each part records its error in the JSON and the next one runs. The JSON is rewritten after each part.
spotrun.core.storage imports pyarrow and tenacity at the top; where they are not installed they are
stood in for by stubs while spotrun modules import (nothing measured calls them; the JSON says so).

    python -m bench.gpu --prepare-assets        # here: MiniLM's config + tokenizer -> bench/gpu_assets/minilm
    python -m bench.gpu --smoke                 # here: CPU, gloo, tiny sizes (checks the script)
    PYTHONPATH=src python3 -m bench.gpu --out $OUT/gpu.json    # on the GPU machine (~3 min)
"""
