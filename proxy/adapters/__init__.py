"""Protocol adapters: how each signaling protocol names meetings, joins and leaves."""
