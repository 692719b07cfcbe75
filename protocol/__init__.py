"""fargpu wire protocol, Python side: frame header codec, record iteration and the msgpack handshake.
The C side is protocol/c; both are checked against protocol/vectors. The spec is protocol/SPEC.md."""
