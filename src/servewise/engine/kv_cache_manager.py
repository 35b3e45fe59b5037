"""Paged KV cache bookkeeping: a pool of fixed-size blocks, ref counts, prefix caching.

Only block *ids* live here; the K/V tensors belong to the model runner. A full
block is identified by a hash chained over every token before it, so a block
can be shared by any request whose prompt starts with the same tokens. A block
whose ref count drops to zero stays in the cache (its hash still maps to it)
until the pool needs it back: free blocks are reused least-recently-freed first,
and blocks without a hash before any cached block.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from servewise.engine.request import Request


@dataclass
class KVBlock:
    block_id: int
    ref_count: int = 0  # requests holding this block
    block_hash: bytes | None = None  # set once the block is full and registered


def hash_block(parent_hash: bytes | None, token_ids: Sequence[int]) -> bytes:
    """Collision-resistant chained hash (builtin hash() of int tuples is attacker-predictable)."""
    h = hashlib.blake2b(digest_size=16)
    if parent_hash is not None:
        h.update(parent_hash)
    h.update(array("q", token_ids).tobytes())
    return h.digest()


def chain_hashes(token_ids: Sequence[int], block_size: int, start: int, stop: int,
                 parent: bytes | None = None) -> Iterator[bytes]:
    """Hashes of full blocks start..stop-1, chained on ``parent`` (the hash of block start-1).
    The fleet's router hashes prompts with it too, so its prefix estimates name the same blocks."""
    for i in range(start, stop):
        parent = hash_block(parent, token_ids[i * block_size:(i + 1) * block_size])
        yield parent


class BlockPool:
    def __init__(self, num_blocks: int) -> None:
        self.blocks = [KVBlock(i) for i in range(num_blocks)]
        # Blocks with ref_count 0, in eviction order (front is evicted first).
        self._free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self._by_hash: dict[bytes, int] = {}

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_cached_blocks(self) -> int:
        return len(self._by_hash)

    def lookup(self, block_hash: bytes) -> int | None:
        return self._by_hash.get(block_hash)

    def allocate(self, count: int) -> list[int]:
        assert count <= len(self._free), "caller must check num_free_blocks first"
        ids = []
        for _ in range(count):
            block_id, _ = self._free.popitem(last=False)
            block = self.blocks[block_id]
            if block.block_hash is not None:  # evict its cached content
                del self._by_hash[block.block_hash]
                block.block_hash = None
            block.ref_count = 1
            ids.append(block_id)
        return ids

    def touch(self, block_ids: Iterable[int]) -> None:
        """Take a reference on cached blocks (a prefix hit), pulling free ones out of the free list."""
        for block_id in block_ids:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self._free[block_id]
            block.ref_count += 1

    def release(self, block_ids: Iterable[int]) -> None:
        for block_id in block_ids:
            block = self.blocks[block_id]
            assert block.ref_count > 0, f"double free of block {block_id}"
            block.ref_count -= 1
            if block.ref_count == 0:
                self._free[block_id] = None
                if block.block_hash is None:  # nothing worth keeping: reuse it first
                    self._free.move_to_end(block_id, last=False)

    def register(self, block_id: int, block_hash: bytes) -> None:
        block = self.blocks[block_id]
        if block.block_hash is None and block_hash not in self._by_hash:
            block.block_hash = block_hash
            self._by_hash[block_hash] = block_id

    def count_free_among(self, block_ids: Iterable[int]) -> int:
        return sum(1 for b in block_ids if self.blocks[b].ref_count == 0)


class KVCacheManager:
    """Allocates blocks to requests; answers prefix-cache lookups."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool) -> None:
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.pool = BlockPool(num_blocks)
        self.num_prefix_query_tokens = 0  # prompt tokens looked up in the prefix cache
        self.num_prefix_hit_tokens = 0  # of which found

    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    @property
    def usage(self) -> float:
        """Fraction of blocks held by requests (cached-but-free blocks count as free)."""
        return 1.0 - self.pool.num_free_blocks / self.pool.num_blocks

    def num_blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def _block_hashes(self, request: Request, num_blocks: int) -> list[bytes]:
        hashes = request.block_hashes  # memoised on the request
        if len(hashes) < num_blocks:
            hashes.extend(chain_hashes(request.token_ids, self.block_size, len(hashes), num_blocks,
                                       hashes[-1] if hashes else None))
        return hashes[:num_blocks]

    def _cached_run(self, hashes: Iterable[bytes]) -> list[int]:
        """Cached block ids for the leading hashes, up to the first miss."""
        hits = []
        for block_hash in hashes:
            block_id = self.pool.lookup(block_hash)
            if block_id is None:
                break
            hits.append(block_id)
        return hits

    def find_cached_prefix(self, request: Request) -> list[int]:
        """Cached blocks holding a prefix of the request's tokens; leaves ≥ 1 token to compute."""
        if not self.enable_prefix_caching:
            return []
        hits = self._cached_run(self._block_hashes(request, (request.num_tokens - 1) // self.block_size))
        self.num_prefix_query_tokens += request.num_tokens
        self.num_prefix_hit_tokens += len(hits) * self.block_size
        return hits

    def num_cached_prefix_tokens(self, token_ids: Sequence[int]) -> int:
        """How many leading tokens of a prompt the cache holds now (a read-only probe: no counters,
        no LRU touch; safe to call from another thread, the answer may be stale a step later)."""
        if not self.enable_prefix_caching:
            return 0
        hashes = chain_hashes(token_ids, self.block_size, 0, (len(token_ids) - 1) // self.block_size)
        return len(self._cached_run(hashes)) * self.block_size

    def shareable_blocks(self, parent: Request, child: Request) -> list[int]:
        """Blocks of ``parent`` a sibling with the same prompt can share (full, below its last token)."""
        num_shareable = min((child.num_tokens - 1) // self.block_size,
                            parent.num_computed_tokens // self.block_size, len(parent.block_ids))
        return parent.block_ids[:num_shareable]

    def can_allocate(self, request: Request, num_new_tokens: int, computed_blocks: Sequence[int] = ()) -> bool:
        total = request.num_computed_tokens + len(computed_blocks) * self.block_size + num_new_tokens
        needed = self.num_blocks_for(total) - len(request.block_ids) - len(computed_blocks)
        return needed <= self.pool.num_free_blocks - self.pool.count_free_among(computed_blocks)

    def allocate(self, request: Request, num_new_tokens: int, computed_blocks: Sequence[int] = ()) -> None:
        """Attach ``computed_blocks`` (prefix hits) and enough new blocks for ``num_new_tokens``."""
        if computed_blocks:
            self.pool.touch(computed_blocks)
            request.block_ids.extend(computed_blocks)
            request.num_computed_tokens += len(computed_blocks) * self.block_size
        needed = self.num_blocks_for(request.num_computed_tokens + num_new_tokens) - len(request.block_ids)
        if needed > 0:
            request.block_ids.extend(self.pool.allocate(needed))

    def cache_full_blocks(self, request: Request) -> None:
        """Register blocks that became full in this step, so later requests can hit them."""
        if not self.enable_prefix_caching:
            return
        num_full = request.num_computed_tokens // self.block_size
        if num_full <= request.num_hashed_blocks:
            return
        hashes = self._block_hashes(request, num_full)
        for i in range(request.num_hashed_blocks, num_full):
            self.pool.register(request.block_ids[i], hashes[i])
        request.num_hashed_blocks = num_full

    def free(self, request: Request) -> None:
        # Tail blocks first: under LRU they are the least likely to be shared later.
        self.pool.release(reversed(request.block_ids))
        request.block_ids = []
        request.num_hashed_blocks = 0
