"""The run modes of `miner run`, on the shared machinery of base.py."""
