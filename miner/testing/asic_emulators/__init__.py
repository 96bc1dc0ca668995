"""ASIC firmware emulators that speak the wire protocols asic-rs (``pyasic-rs``) uses.

asic-rs addresses a miner by IP only: it probes HTTP on port 80 and the cgminer API on
port 4028 and has no port setting. So each emulated miner gets its own loopback address
(127.0.0.0/8 all routes to ``lo`` on Linux) and listens on the real ports there. Binding
port 80 needs root or CAP_NET_BIND_SERVICE; :func:`can_bind_low_ports` tells.

One :class:`EmulatorHost` runs any number of miners in one asyncio loop: two listening
sockets per miner, nothing per miner but its state, so a benchmark can run thousands.

Families, each answering what asic-rs sends to identify it, read it and control it:

* :class:`LuxOSMiner` -- LuxOS (LUXminer) on an Antminer: the cgminer JSON API on 4028
  (``version`` identifies it by ``LUXminer`` in ``STATUS[0].Description``; ``summary``,
  ``stats``, ``devs``, ``pools``, ``config``, ``power``, ``profiles``, ``fans``,
  ``temps``; ``session`` / ``logon`` / ``logoff`` hand out the session id that
  ``curtail <sid>,sleep|wakeup`` and ``profileset <sid>,<profile>`` need). Replies end
  with a NUL byte and the connection closes, as cgminer does.
* :class:`VNishMiner` -- VNish (AnthillOS web UI) on an Antminer: HTTP JSON under
  ``/api/v1``; ``POST /unlock {"pw"}`` gives a bearer token every other call needs;
  ``info``, ``status``, ``summary``, ``chains``, ``chains/factory-info``, ``settings``
  (GET/POST, ``miner.overclock.preset`` is the power preset), ``autotune/presets``
  (``name`` is the preset's watts), ``mining/stop``, ``mining/start``.
* :class:`BraiinsOSMiner` -- Braiins OS 25.07+ on an Antminer: bosminer's cgminer API on
  4028 (``version`` names ``BOSminer``), GraphQL ``POST /graphql`` for the model and
  version asic-rs picks its backend by, and the REST API under ``/api/v1`` behind
  ``POST /auth/login`` (the token goes bare in ``Authorization``): ``miner/details``
  (``status`` 2 mining, 3 paused), ``miner/stats``, ``configuration/miner`` (the power
  target), ``PUT performance/power-target {"watt"}``, ``PUT actions/pause|resume``.
* :class:`EPicMiner` -- ePIC PowerPlay: HTTP JSON on port 4028 (``/capabilities``,
  ``/summary``; ``POST /miner`` Stop/Autostart and ``POST /perpetualtune/algo`` with the
  password in the body), its dashboard on 80 (``Miner Web Dashboard`` identifies it).
* :class:`WhatsMinerMiner` -- Whatsminer on 2024-11+ firmware: btminer's API on 4028
  (``devdetails`` names ``bitmicro``; ``get_version``'s ``fw_ver`` date selects API v3)
  and API v3 on 4433 (4-byte length + JSON; writes carry a sha256 token over the salt).
* :class:`AntminerStockMiner` -- stock Bitmain firmware (2023+): the web CGI behind HTTP
  digest auth (realm ``antMiner Configuration``; the 401 on ``GET /`` identifies it),
  ``miner_type.cgi``, ``summary.cgi`` (``INFO.CompileTime`` picks asic-rs's backend),
  ``get_system_info.cgi``, ``get_miner_conf.cgi`` / ``set_miner_conf.cgi`` (work mode 0
  normal, 1 sleep, 2 high, 3 low), and bmminer's cgminer API on 4028 (``version``,
  ``summary``, ``stats`` with ``chain_power``, ``pools``).
* :class:`BitaxeMiner` -- ESP-Miner's AxeOS HTTP API (``GET /`` names AxeOS,
  ``GET /api/system/info``, ``GET /api/system/asic``); no 4028 listener.

Shapes follow the firmware documentation and asic-rs's own test vectors (LuxOS API
reference, VNish 1.3 and Braiins OS 25.07 OpenAPI documents, ESP-Miner ``openapi.yaml``,
Bitmain's CGI as asic-rs and pyasic read it). Every request is recorded in
``miner.requests`` (the oldest half dropped past ``MAX_RECORDED``). ``obey = False`` makes a miner acknowledge control
commands and change nothing (a device that does not obey); ``hang = True`` makes it read
requests and never answer (connections stay open until the client gives up).
"""

from miner.testing.asic_emulators.antminer import AntminerStockMiner, digest_response, parse_digest_header
from miner.testing.asic_emulators.base import HTTP_PORT, RPC_PORT, EmulatedMiner, Request, cgminer_status
from miner.testing.asic_emulators.fleet import FAMILIES, serve_fleet
from miner.testing.asic_emulators.host import EmulatorHost, can_bind_low_ports, raise_open_file_limit
from miner.testing.asic_emulators.luxos import LUXOS_S19K_PROFILES, LuxOSMiner, LuxProfile
from miner.testing.asic_emulators.web_json import (VNISH_S19JPRO_PRESETS, BitaxeMiner, BraiinsOSMiner, EPicMiner,
                                                   VNishMiner, VNishPreset)
from miner.testing.asic_emulators.whatsminer import WhatsMinerMiner, v3_token

__all__ = ["AntminerStockMiner", "BitaxeMiner", "BraiinsOSMiner", "EPicMiner", "EmulatedMiner", "EmulatorHost",
           "FAMILIES", "HTTP_PORT", "LUXOS_S19K_PROFILES", "LuxOSMiner", "LuxProfile", "RPC_PORT", "Request",
           "VNISH_S19JPRO_PRESETS", "VNishMiner", "VNishPreset", "can_bind_low_ports", "cgminer_status",
           "digest_response", "parse_digest_header", "raise_open_file_limit", "serve_fleet", "v3_token",
           "WhatsMinerMiner"]
