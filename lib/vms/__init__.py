"""VM allocation (LabLink): hand out GPU workstations with no double-booking, health-checked and reaped.

- ``store``: the VM tables in PostgreSQL (claims with SKIP LOCKED, changes by LISTEN/NOTIFY), tokens.
- ``app`` / ``server``: the allocator (FastAPI on uvicorn) and its web page (``page``).
- ``client``: the service on each VM (register, GPU check, heartbeat, the user's command).
- ``provision``, ``local``, ``opentofu``: provisioners behind one interface.
- ``lifecycle``: create, destroy and reap, as the flows run them.
"""
