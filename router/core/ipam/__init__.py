"""IPAM core: address ownership as a gossiped ring, consensus, allocation (sans-I/O).

See docs/ipam.md.  `space` is interval arithmetic, `ring` the ownership CRDT, `paxos` the
initial agreement, `codec` the JSON layouts, `allocator` the facade the service drives.
"""
