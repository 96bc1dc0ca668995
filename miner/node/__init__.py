"""The node edge: JSON-RPC client (rpc), ZMQ notifications (zmq), the pinned regtest node (regtest)."""
