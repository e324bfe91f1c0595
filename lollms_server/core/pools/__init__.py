"""Where a pool runs: the pool-host seam (DESIGN §6).

- ``host``: the :class:`PoolHost` / :class:`PoolSession` protocols;
- ``registry``: one host per pool from the config;
- ``local``: a pool in this process (also what worker processes and Ray actors run inside);
- ``leases``: the remote side of a hosted pool (worker process, Ray actor);
- ``remote``: the gateway side shared by the remote hosts (stand-in binding, policy);
- ``process`` / ``process_supervisor``: the worker-process host and its process supervision;
- ``ray`` / ``ray_actor`` / ``ray_cluster``: the Ray host, its actor and Ray plumbing;
- ``wire``: JSON forms of the contract's values for the worker wire.
"""

from lollms_server.core.pools.host import PoolHost, PoolSession
from lollms_server.core.pools.registry import PoolRegistry

__all__ = ["PoolHost", "PoolRegistry", "PoolSession"]
