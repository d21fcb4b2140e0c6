"""swarmrl's wire protocol: what every role agrees on, and nothing else.

Everything that two parties must compute identically lives here: message schemas
(`messages`), canonical bytes and signed envelopes (`canonical`, `envelope`), Ed25519
identities (`identity`), the signed policy manifest (`manifest`), URL paths (`routes`),
the activation-proof codec (`proof`), seeded sampling noise (`sampling`), task scoring
(`tasks`, run on worker text only inside the scorer sandbox, `sandbox`) and the model forward
pass that defines "final hidden state" (`lm`).

This package imports nothing else of swarmrl. Heavy dependencies (torch, transformers)
are imported only by the submodules that need them (`proof`, `sampling`, `lm`), so
`import protocol` stays cheap.
"""

PROTOCOL_VERSION = 1
