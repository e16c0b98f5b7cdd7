"""A stand-in for the InventoryArts API, for the demo, the tests and benchmarks.

It follows ``shared/inventoryarts-api.md`` (filled in by DESIGN §3 where that is silent):
bearer-protected ``me.php``, ``purchase_orders.php`` (the 20 newest orders, no paging,
``grand_total`` as a decimal string), ``item_checkin.php``, rotating refresh tokens on
``oauth_refresh.php`` and signed, expiring ``print_po.php`` links to real PDF files.
Tests script faults and read request statistics through :class:`Simulator`.

Standard library only, and nothing from the rest of syncd: the simulator stands on the
vendor's side of the wire.
"""

from syncd.simulator.faults import Fault, Faults, RequestRecord, Stats
from syncd.simulator.server import Simulator, serve

__all__ = ["Fault", "Faults", "RequestRecord", "Simulator", "Stats", "serve"]
