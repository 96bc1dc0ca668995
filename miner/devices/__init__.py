"""Device-facing surfaces of a rig: the cgminer-compatible agent control API."""

from miner.devices.agent_api import AgentAPIConfigError, AgentAPIServer, AgentState

__all__ = ["AgentAPIConfigError", "AgentAPIServer", "AgentState"]
