"""shardcast: signed, sharded, versioned weight broadcast through untrusted relays.

    origin.Origin          inside the trainer: publishes checkpoint folders as signed versions
    relay.Relay / run      `swarmrl relay`: mirrors upstreams, verifies, serves (trees of any depth)
    client.ShardcastClient in workers and verifiers: long-poll, parallel verified fetch, resume

Supporting modules: serving (the HTTP API of origins and relays), front (the public port:
shards with sendfile) and front_guard (its limits on slow and greedy clients), fetch
(parallel verified shard downloads with failover) and transfer (their HTTP data path: head
deadlines, minimum rate), watch (manifests and long-polls) and bounded (every control
request to an untrusted source: deadline, byte cap, no compression), selection (choice of
source), partial (a download in progress), layout (folders and atomic renames), signal,
metrics, errors, config. shardcast imports only `protocol`.
"""
