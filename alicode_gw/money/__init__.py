"""Money: prices (the catalog), holds and settlements, credit leases, the settlement
journal, the ledger.
"""
