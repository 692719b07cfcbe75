"""Park stores: where a parked session's state goes when its worker exits (issue 12). `store.py` is the interface
and the part/checksum bookkeeping every backend shares; `directory.py` and `s3.py` are the two backends."""
