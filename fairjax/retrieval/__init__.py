"""Item-sharded exact MIPS over a device mesh with dual-space queries.

`dual_topk(item_emb, item_group, user_emb, mu, k, mesh=None)` returns the exact
top-k of <u, v_i> - mu[g_i] (FairSync, DESIGN.md section 5), optionally
leaving out per-query item ids (`exclude=`, e.g. a user's training items);
`shard_items` lays a catalog out once for repeated calls; `sharded_topk` is
the jitted core used inside serving loops (`allowed=` restricts it to some
groups and skips the blocks without them; `shard_items_by_group` lays the
catalog out so those blocks are few and spread evenly over the shards).
`precision="bf16"` proposes candidates with bfloat16 products (on a CPU with
AMX-BF16 one native call, `fairjax.ops.bf16_proposals`; elsewhere XLA's
bfloat16 GEMM and the blocked scan) and rescores them exactly
(`blocked.exact_scores`, `blocked.proposal_error`).
"""

from fairjax.retrieval.blocked import local_topk, merge_topk
from fairjax.retrieval.sharded import (
    AXIS, ShardedItems, block_size_for, check_exclude, check_finite,
    check_groups, dual_topk, padded_size, replicate, shard_items,
    shard_items_by_group, sharded_topk)

__all__ = [
    "AXIS", "ShardedItems", "block_size_for", "check_exclude", "check_finite",
    "check_groups", "dual_topk", "local_topk", "merge_topk", "padded_size",
    "replicate", "shard_items", "shard_items_by_group", "sharded_topk",
]
