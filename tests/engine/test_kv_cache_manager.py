from servewise.engine.kv_cache_manager import BlockPool, KVCacheManager, hash_block
from tests.engine.utils import create_request


def test_allocate_and_free_return_every_block():
    kv = KVCacheManager(num_blocks=10, block_size=4, enable_prefix_caching=False)
    r = create_request(10)
    assert kv.can_allocate(r, 10)
    kv.allocate(r, 10)
    assert len(r.block_ids) == 3 and kv.num_free_blocks == 7
    r.num_computed_tokens = 10
    kv.allocate(r, 2)  # 12 tokens still fit in 3 blocks
    assert len(r.block_ids) == 3
    kv.allocate(r, 3)  # 13..15 -> a 4th block
    assert len(r.block_ids) == 4
    kv.free(r)
    assert kv.num_free_blocks == 10 and r.block_ids == []


def test_cannot_allocate_past_the_pool():
    kv = KVCacheManager(num_blocks=2, block_size=4, enable_prefix_caching=False)
    r = create_request(9)
    assert not kv.can_allocate(r, 9)
    assert kv.can_allocate(r, 8)


def _compute(kv, r, n):
    kv.allocate(r, n)
    r.num_computed_tokens += n
    kv.cache_full_blocks(r)


def test_prefix_hit_shares_blocks_and_ref_counts():
    kv = KVCacheManager(num_blocks=16, block_size=4, enable_prefix_caching=True)
    a = create_request(list(range(1, 14)))  # 13 tokens: 3 full blocks
    _compute(kv, a, 13)
    b = create_request(list(range(1, 11)) + [99, 98])  # shares the first 2 full blocks + 2 tokens of the third
    hits = kv.find_cached_prefix(b)
    assert hits == a.block_ids[:2]
    assert kv.num_prefix_hit_tokens == 8 and kv.num_prefix_query_tokens == 12
    kv.allocate(b, b.num_tokens - 8, hits)
    assert b.num_computed_tokens == 8
    assert [kv.pool.blocks[i].ref_count for i in a.block_ids[:2]] == [2, 2]
    kv.free(a)
    assert [kv.pool.blocks[i].ref_count for i in b.block_ids[:2]] == [1, 1]
    kv.free(b)
    assert kv.num_free_blocks == 16


def test_whole_prompt_hit_leaves_one_token_to_compute():
    kv = KVCacheManager(num_blocks=16, block_size=4, enable_prefix_caching=True)
    a = create_request(8)
    _compute(kv, a, 8)
    b = create_request(8)
    assert len(kv.find_cached_prefix(b)) == 1  # block 2 would cover the last token: not taken


def test_freed_cached_blocks_survive_until_evicted_lru():
    kv = KVCacheManager(num_blocks=4, block_size=4, enable_prefix_caching=True)
    a = create_request(list(range(1, 10)))  # 2 full blocks + 1 partial
    _compute(kv, a, 9)
    a_blocks = list(a.block_ids)
    kv.free(a)
    assert kv.num_free_blocks == 4 and kv.pool.num_cached_blocks == 2
    # the unhashed partial block is reused first, so both cached blocks still hit
    c = create_request([50, 51])
    kv.allocate(c, 2)
    assert c.block_ids == [a_blocks[2]]
    again = create_request(list(range(1, 10)))
    assert kv.find_cached_prefix(again) == a_blocks[:2]
    # filling the pool takes the never-used block, then evicts cached ones, tail block first
    d = create_request([60] * 8)
    kv.allocate(d, 8)
    assert d.block_ids[1] == a_blocks[1] and d.block_ids[0] not in a_blocks
    assert kv.find_cached_prefix(create_request(list(range(1, 10)))) == a_blocks[:1]


def test_sibling_shares_only_blocks_below_its_last_token():
    kv = KVCacheManager(num_blocks=16, block_size=4, enable_prefix_caching=False)
    leader = create_request(8)
    _compute(kv, leader, 8)
    child = create_request(8)
    shared = kv.shareable_blocks(leader, child)
    assert shared == leader.block_ids[:1]


def test_duplicate_content_is_cached_once():
    pool = BlockPool(3)
    h = hash_block(None, [1, 2, 3, 4])
    pool.register(0, h)
    pool.register(1, h)
    assert pool.lookup(h) == 0 and pool.blocks[1].block_hash is None


def test_hash_chain_depends_on_prefix():
    assert hash_block(None, [1, 2]) != hash_block(hash_block(None, [0]), [1, 2])


def test_probe_counts_cached_prefix_tokens_without_touching_anything():
    kv = KVCacheManager(num_blocks=16, block_size=4, enable_prefix_caching=True)
    prompt = list(range(1, 14))  # 13 tokens: 3 full blocks
    assert kv.num_cached_prefix_tokens(prompt) == 0
    _compute(kv, create_request(prompt), 13)
    assert kv.num_cached_prefix_tokens(prompt + [50, 51]) == 12
    assert kv.num_cached_prefix_tokens(prompt[:12]) == 8  # the last token is always computed
    assert kv.num_cached_prefix_tokens(list(range(1, 9)) + [77] * 8) == 8  # stops at the first miss
    assert kv.num_cached_prefix_tokens([99] + prompt) == 0  # a chained hash: same blocks, other prefix
    assert kv.num_prefix_query_tokens == 0 and kv.num_prefix_hit_tokens == 0
    assert KVCacheManager(16, 4, enable_prefix_caching=False).num_cached_prefix_tokens(prompt) == 0
