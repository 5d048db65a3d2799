"""The fleet: ESPHome devices on mDNS, configurations as a fleet, and flash verification.

Self-contained for now (the daemon, API and engine wire it in later); one job per module:

* ``advert``: the ``_esphomelib._tcp`` TXT layout real firmware sends, parsed defensively;
* ``model``: ``DeviceState`` and the monitor's ``DeviceEvent``;
* ``monitor``: browse devices, online/offline with last-seen, listeners within the
  packet's loop iteration;
* ``store``: the ``fleet_devices`` and ``fleet_config_hashes`` SQLite tables;
* ``configs``: configuration directories read cheaply (name, mac suffix, network);
* ``confighash``: the current config hash from ``esphome config-hash``, cached by stamps;
* ``buildinfo``: what a finished build will report (``build_info.json``);
* ``state``: per configuration ``up-to-date``/``outdated``/``offline``/``never-built``/``unknown``;
* ``resolve``: the OTA address as ``esphome run`` picks it;
* ``verify``: after a flash, is the new build running (mDNS and the native API).
"""
