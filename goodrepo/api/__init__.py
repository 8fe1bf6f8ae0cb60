"""The fixed HTTP endpoints beside the schema's routes: accounts, admin, events."""
