"""The run modes of `miner run`, one module each, on the shared machinery of base.py.

    base.Run ─┬─ solo.SoloMiner         templates from a node, blocks to the node
              └─ upstream.UpstreamRun ─┬─ agent.AgentMiner   a stratum pool's jobs, cgminer API
                                       └─ proxy.ProxyMiner   rigs mine the pool through our server

miner/controller.py picks the class for a validated Config.
"""
