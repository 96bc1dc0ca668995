"""Devices: the vocabulary every driver meets (`miner.devices.model`), the drivers, and the
cgminer-compatible control API a rig serves (`miner.devices.agent_api`)."""
