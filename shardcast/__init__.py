"""shardcast: signed, sharded, versioned weight broadcast through untrusted relays.

    origin.Origin          inside the trainer: publishes checkpoint folders as signed versions
    relay.Relay / run      `swarmrl relay`: mirrors upstreams, verifies, serves (trees of any depth)
    client.ShardcastClient in workers and verifiers: long-poll, parallel verified fetch, resume

Supporting modules: serving (the HTTP API of origins and relays), fetch (parallel verified
shard downloads with failover), watch (manifests and long-polls), selection (choice of
source), partial (a download in progress), layout (folders and atomic renames), signal,
metrics, errors, config. shardcast imports only `protocol`.
"""
